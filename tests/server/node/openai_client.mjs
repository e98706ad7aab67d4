// Drives a pdserve server with the official OpenAI npm client and prints what it received as one
// JSON object. Usage: node openai_client.mjs BASE_URL API_KEY
import OpenAI from "openai";

const [baseURL, apiKey] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 120000 });
const out = {};

const models = await client.models.list();
const model = models.data[0].id;
out.model = model;

const comp = await client.completions.create({ model, prompt: "Once upon a time", max_tokens: 8, temperature: 0 });
out.completion = { text: comp.choices[0].text, finish_reason: comp.choices[0].finish_reason, usage: comp.usage };

let streamedText = "";
let chunks = 0;
const compStream = await client.completions.create({ model, prompt: "Once upon a time", max_tokens: 8, temperature: 0, stream: true });
for await (const chunk of compStream) {
  chunks += 1;
  streamedText += chunk.choices[0]?.text ?? "";
}
out.completion_stream = { text: streamedText, chunks };

const messages = [
  { role: "system", content: "You are terse." },
  { role: "user", content: "Name a color." },
];
const chat = await client.chat.completions.create({ model, messages, max_tokens: 8, temperature: 0 });
out.chat = { content: chat.choices[0].message.content, role: chat.choices[0].message.role, finish_reason: chat.choices[0].finish_reason, usage: chat.usage };

let chatText = "";
let usage = null;
let finish = null;
const chatStream = await client.chat.completions.create({ model, messages, max_tokens: 8, temperature: 0, stream: true, stream_options: { include_usage: true } });
for await (const chunk of chatStream) {
  if (chunk.usage) usage = chunk.usage;
  const choice = chunk.choices[0];
  if (choice) {
    chatText += choice.delta?.content ?? "";
    if (choice.finish_reason) finish = choice.finish_reason;
  }
}
out.chat_stream = { content: chatText, usage, finish_reason: finish };

try {
  await client.chat.completions.create({ model, messages: [], max_tokens: 4 });
  out.bad_request = { status: 200 };
} catch (e) {
  out.bad_request = { status: e.status, message: e.message };
}
console.log(JSON.stringify(out));
