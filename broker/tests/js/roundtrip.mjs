// MQTT.js over WebSocket (as in a browser): connect with MQTT 5, subscribe,
// publish at QoS 1 with a user property, receive it, print one JSON line.
import mqtt from "mqtt";

const url = process.argv[2];
const fail = (why) => { console.log(JSON.stringify({ ok: false, why: String(why) })); process.exit(1); };
setTimeout(() => fail("timeout"), 10000);

const client = mqtt.connect(url, { protocolVersion: 5, clientId: "mqttjs-" + process.pid, reconnectPeriod: 0 });
client.on("error", fail);
client.on("connect", () => {
  client.subscribe("js/echo", { qos: 1 }, (err, granted) => {
    if (err) return fail(err);
    client.publish("js/echo", "hello from mqtt.js", { qos: 1, properties: { userProperties: { via: "ws" } } });
  });
});
client.on("message", (topic, payload, packet) => {
  console.log(JSON.stringify({
    ok: true,
    topic,
    payload: payload.toString(),
    qos: packet.qos,
    user: packet.properties?.userProperties?.via ?? null,
  }));
  client.end(false, {}, () => process.exit(0));
});
