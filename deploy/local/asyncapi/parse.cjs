// Parses an AsyncAPI document with the official parser (@asyncapi/parser, the one @asyncapi/cli uses) and
// prints its diagnostics as JSON: {"errors": [...], "warnings": [...], "channels": [...], "messages": [...]}.
// Exit code 0 when the document loads without errors, 1 otherwise.
//   node deploy/local/asyncapi/parse.cjs <node_modules folder> <document>
const path = require("path");
const fs = require("fs");
const modules = path.resolve(process.argv[2]);
const documentPath = path.resolve(process.argv[3]);
const { Parser, fromFile } = require(path.join(modules, "@asyncapi/parser"));

(async () => {
  const parser = new Parser();
  const { document, diagnostics } = await fromFile(parser, documentPath).parse();
  const severity = { 0: "error", 1: "warning", 2: "information", 3: "hint" };
  const out = { errors: [], warnings: [], channels: [], messages: [] };
  for (const d of diagnostics) {
    const entry = { code: d.code, message: d.message, path: (d.path || []).join(".") };
    if (severity[d.severity] === "error") out.errors.push(entry);
    else if (severity[d.severity] === "warning") out.warnings.push(entry);
  }
  if (document) {
    out.channels = document.channels().all().map((c) => c.address());
    out.messages = document.components().messages().all().map((m) => m.id());
  }
  process.stdout.write(JSON.stringify(out, null, 1) + "\n");
  process.exit(document && out.errors.length === 0 ? 0 : 1);
})().catch((e) => { process.stderr.write(String(e && e.stack || e) + "\n"); process.exit(2); });
