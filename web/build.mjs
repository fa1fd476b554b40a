// Builds the browser client: the protobuf schema (from the server's own
// .proto, parsed by protobufjs) as JSON, then the module and the chat page
// bundled by esbuild (TypeScript in, one file out each).
import { readFileSync, writeFileSync, mkdirSync } from "node:fs";
import protobuf from "protobufjs";
import { build } from "esbuild";

const proto = readFileSync(new URL("../chat/proto/courier/chat/v1/chat.proto", import.meta.url), "utf8");
const root = protobuf.parse(proto, { keepCase: true }).root;
mkdirSync(new URL("./src/generated", import.meta.url), { recursive: true });
writeFileSync(new URL("./src/generated/schema.json", import.meta.url), JSON.stringify(root.toJSON()));

const common = { bundle: true, platform: "browser", target: "es2020", logLevel: "warning" };
await build({ ...common, entryPoints: ["src/courier.ts"], format: "esm", outfile: "dist/courier.js" });
await build({ ...common, entryPoints: ["src/app.ts"], format: "iife", outfile: "dist/app.js" });
console.log("built web/dist/courier.js and web/dist/app.js");
