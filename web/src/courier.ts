// Courier's browser client: one chat device over MQTT 5 on WebSocket
// (MQTT.js), speaking docs/PROTOCOL.md with protobuf types generated from
// the server's own chat.proto (build.mjs). Small on purpose: connect,
// send, requests, and the events of the inbox.

import mqtt, { MqttClient, IClientPublishOptions } from "mqtt";
import protobuf from "protobufjs";
import schemaJson from "./generated/schema.json";

const root = protobuf.Root.fromJSON(schemaJson as protobuf.INamespace);
const T = (name: string) => root.lookupType(`courier.chat.v1.${name}`);
const SendMessage = T("SendMessage");
const Request = T("Request");
const Down = T("Down");
const Typing = T("Typing");

/** Plain objects as protobufjs gives them (snake_case, numbers, enum names). */
export type Obj = { [k: string]: any };

const toObject = (t: protobuf.Type, bytes: Uint8Array): Obj =>
  t.toObject(t.decode(bytes), { longs: Number, enums: String, bytes: Array, defaults: true, oneofs: true });

/** How to connect. */
export interface Options {
  /** The broker's WebSocket URL, e.g. ws://127.0.0.1:8080/mqtt. */
  url: string;
  user: string;
  device: string;
  /** An access token (JWT). */
  token: string;
}

/** A refusal: the protocol's error code name and the server's reason. */
export class ChatError extends Error {
  constructor(public code: string, message: string) {
    super(`${code}: ${message}`);
  }
}

type Handler = (x: Obj) => void;

/** A connected browser device. */
export class CourierClient {
  private client?: MqttClient;
  private handlers = new Map<string, Handler[]>();
  private pending = new Map<number, (r: Obj) => void>();
  private pubacks = new Map<number, Obj>();
  private nextCorr = 1;
  private seen = new Set<string>();
  readonly inbox: string;

  constructor(private opts: Options) {
    this.inbox = `c/in/${opts.user}/${opts.device}`;
  }

  /** Listens to `entry`, `receipt`, `typing`, `presence`, `call`, `gap`,
   * `expired`, `connected`, `disconnected`. */
  on(event: string, h: Handler): void {
    const list = this.handlers.get(event) ?? [];
    list.push(h);
    this.handlers.set(event, list);
  }

  private emit(event: string, x: Obj): void {
    for (const h of this.handlers.get(event) ?? []) h(x);
  }

  /** Connects (and reconnects by itself); resolves once subscribed. */
  connect(): Promise<void> {
    const c = mqtt.connect(this.opts.url, {
      protocolVersion: 5,
      clientId: `${this.opts.user}:${this.opts.device}`,
      username: "",
      password: this.opts.token,
      clean: true,
      reconnectPeriod: 1000,
      properties: { sessionExpiryInterval: 0 },
    });
    this.client = c;
    c.on("packetreceive", (p: any) => {
      if (p.cmd === "puback" && p.messageId) this.pubacks.set(p.messageId, p);
    });
    c.on("message", (_topic, payload, packet: any) => this.down(payload, packet));
    c.on("close", () => this.emit("disconnected", {}));
    return new Promise((resolve, reject) => {
      c.once("error", reject);
      c.on("connect", () => {
        c.subscribe(this.inbox, { qos: 1 }, (err) => {
          if (err) return reject(err);
          this.emit("connected", {});
          resolve();
        });
      });
    });
  }

  private down(payload: Uint8Array, packet: any): void {
    const d = toObject(Down, payload);
    switch (d.kind) {
      case "entry": {
        const e = d.entry;
        const key = `${e.conversation}/${e.seq}`;
        // At least once: a repeat is known by its key.
        if (this.seen.has(key)) return;
        this.seen.add(key);
        this.emit("entry", e);
        break;
      }
      case "response": {
        const corr = packet.properties?.correlationData;
        const id = corr ? Number(new TextDecoder().decode(corr)) : 0;
        const done = this.pending.get(id);
        if (done) {
          this.pending.delete(id);
          done(d.response);
        }
        break;
      }
      case "receipts":
        for (const r of d.receipts.receipts) this.emit("receipt", r);
        break;
      case "presence":
        for (const p of d.presence.presences) this.emit("presence", p);
        break;
      default:
        if (d.kind) this.emit(d.kind, d[d.kind]);
    }
  }

  private publish(topic: string, bytes: Uint8Array, opts: IClientPublishOptions): Promise<Obj> {
    const c = this.client;
    if (!c) return Promise.reject(new Error("not connected"));
    return new Promise((resolve, reject) => {
      c.publish(topic, bytes as any, opts, (err, packet: any) => {
        const ack = packet?.messageId ? this.pubacks.get(packet.messageId) : undefined;
        if (packet?.messageId) this.pubacks.delete(packet.messageId);
        const props: Obj = ack?.properties?.userProperties ?? {};
        if (err) {
          reject(new ChatError(String(props.e ?? (err as any).code ?? "ERROR"), ack?.properties?.reasonString ?? err.message));
        } else {
          resolve(props);
        }
      });
    });
  }

  /** Sends a text message to a user (its direct conversation) or a
   * conversation; resolves with its seq and conversation once stored. */
  async sendText(to: { user?: string; conversation?: string }, text: string): Promise<{ seq: number; conversation: string }> {
    const id = `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
    const msg = SendMessage.fromObject({
      conversation: to.conversation ?? "",
      to_user: to.user ?? "",
      client_msg_id: id,
      content: { type: "text", body: new TextEncoder().encode(text) },
    });
    const props = await this.publish("c/s", SendMessage.encode(msg).finish(), { qos: 1 });
    return { seq: Number(props.seq ?? 0), conversation: String(props.c ?? to.conversation ?? "") };
  }

  /** Sends a request (`op` is the name of one of Request's fields, e.g.
   * "list_conversations") and resolves with its result. */
  async request(op: string, body: Obj = {}): Promise<Obj> {
    const corr = this.nextCorr++;
    const req = Request.fromObject({ [op]: body });
    const answer = new Promise<Obj>((resolve) => this.pending.set(corr, resolve));
    await this.publish("c/r", Request.encode(req).finish(), {
      qos: 1,
      properties: { responseTopic: this.inbox, correlationData: new TextEncoder().encode(String(corr)) as any },
    }).catch((e) => {
      this.pending.delete(corr);
      throw e;
    });
    const r = await answer;
    if (r.error) throw new ChatError(String(r.error.code), r.error.message);
    return r.result ? r[r.result] : {};
  }

  /** The snapshot: conversations, most recent first. */
  async conversations(): Promise<Obj[]> {
    return (await this.request("list_conversations", { limit: 50 })).conversations ?? [];
  }

  /** A page of history, oldest first. */
  async history(conversation: string, limit = 50): Promise<Obj[]> {
    return (await this.request("history", { conversation, limit })).entries ?? [];
  }

  markRead(conversation: string, seq: number): Promise<Obj> {
    return this.request("mark_read", { conversation, seq });
  }

  async watchPresence(users: string[]): Promise<Obj[]> {
    return (await this.request("watch_presence", { users })).presences ?? [];
  }

  /** Typing indicators go at QoS 0 and are never stored. */
  typing(conversation: string, typing: boolean): void {
    const t = Typing.fromObject({ conversation, typing });
    this.client?.publish("c/t", Typing.encode(t).finish() as any, { qos: 0 });
  }

  close(): void {
    this.client?.end();
  }
}

/** The text of a message entry, if it is one. */
export function textOf(e: Obj): string | undefined {
  return e.kind === "content" ? new TextDecoder().decode(new Uint8Array(e.content.body)) : undefined;
}
