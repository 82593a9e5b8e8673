// Generates src/api.d.ts, the types of longrun's HTTP/JSON API, from its
// OpenAPI document: the file named by $LONGRUN_OPENAPI, else what
// `longrun openapi` prints ($LONGRUN_BIN, else `cargo run` in the
// repository). The generated file is never edited or checked in.
import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import openapiTS, { astToString } from "openapi-typescript";

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "..", "..", "..");
let document;
if (process.env.LONGRUN_OPENAPI) {
  document = readFileSync(process.env.LONGRUN_OPENAPI, "utf8");
} else if (process.env.LONGRUN_BIN) {
  document = execFileSync(process.env.LONGRUN_BIN, ["openapi"], { encoding: "utf8" });
} else {
  document = execFileSync("cargo", ["run", "--quiet", "--", "openapi"], { cwd: root, encoding: "utf8" });
}
const ast = await openapiTS(JSON.parse(document));
const banner = "// Generated from longrun's OpenAPI document by scripts/generate.mjs: do not edit.\n";
writeFileSync(join(here, "..", "src", "api.d.ts"), banner + astToString(ast));
