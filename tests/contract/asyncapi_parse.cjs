// Parses an AsyncAPI document (path in argv[2]) with the official parser; prints its diagnostics as JSON
// lines and exits 1 when any is an error (severity 0), 0 otherwise. Run by tests/contract/test_asyncapi.py.
const fs = require('fs');
const { Parser } = require('@asyncapi/parser');

async function main() {
  const parser = new Parser();
  const { document, diagnostics } = await parser.parse(fs.readFileSync(process.argv[2], 'utf8'));
  let errors = 0;
  for (const d of diagnostics) {
    if (d.severity === 0) errors += 1;
    console.log(JSON.stringify({ severity: d.severity, code: d.code, path: d.path, message: d.message }));
  }
  if (document === undefined && errors === 0) errors = 1;
  process.exit(errors ? 1 : 0);
}
main().catch((e) => { console.error(e); process.exit(2); });
