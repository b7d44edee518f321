#!/usr/bin/env node
// StyLua, the Lua formatter, from its npm package: a WebAssembly build with no command line of its own (the
// package with the native binary downloads it from outside the registry when installed, which fails here).
// This is that command line. It installs the package once under ~/.cache/tollway/npm/stylua-<version>/,
// reads stylua.toml at the repository root, and formats the files in place; with --check it changes nothing,
// names the files that are not formatted and exits 1.
//
//   hack/stylua.mjs [--check] FILE...
import { execFileSync } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { homedir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const VERSION = process.env.STYLUA_VERSION ?? "2.5.2";
const PACKAGE = "@johnnymorganz/stylua";
const ROOT = dirname(dirname(fileURLToPath(import.meta.url)));
const prefix = join(process.env.TOLLWAY_CACHE ?? join(homedir(), ".cache", "tollway"), "npm", `stylua-${VERSION}`);
const location = join(prefix, "node_modules", PACKAGE);

function fail(message) {
  console.error(`stylua: ${message}`);
  process.exit(2);
}

if (!existsSync(join(location, "package.json"))) {
  console.error(`>> installing ${PACKAGE} ${VERSION} (first time only)`);
  const flags = ["--no-save", "--no-audit", "--no-fund", "--loglevel=error"];
  execFileSync("npm", ["install", "--prefix", prefix, ...flags, `${PACKAGE}@${VERSION}`], {
    stdio: ["ignore", "ignore", "inherit"],
  });
}
const stylua = createRequire(import.meta.url)(location);

// stylua.toml's settings, as the native command reads them (flat `key = value` lines only).
const CHOICES = {
  block_newline_gaps: stylua.BlockNewlineGaps,
  call_parentheses: stylua.CallParenType,
  collapse_simple_statement: stylua.CollapseSimpleStatement,
  indent_type: stylua.IndentType,
  line_endings: stylua.LineEndings,
  quote_style: stylua.QuoteStyle,
  space_after_function_names: stylua.SpaceAfterFunctionNames,
  syntax: stylua.LuaVersion,
};
const NUMBERS = new Set(["column_width", "indent_width"]);
const settings = [];
for (const line of readFileSync(join(ROOT, "stylua.toml"), "utf8").split("\n")) {
  const text = line.replace(/#.*/, "").trim();
  if (text === "") continue;
  const found = text.match(/^(\w+)\s*=\s*"?([\w.]+)"?$/);
  if (found === null) fail(`stylua.toml: cannot read "${line}"`);
  const [, key, value] = found;
  if (key in CHOICES && value in CHOICES[key]) settings.push([key, CHOICES[key][value]]);
  else if (NUMBERS.has(key)) settings.push([key, Number(value)]);
  else fail(`stylua.toml: ${key} = ${value} is not a setting this command knows`);
}

function configured() {
  const config = stylua.Config.new(); // formatCode consumes it: one for each file
  for (const [key, value] of settings) config[key] = value;
  return config;
}

const args = process.argv.slice(2);
const check = args[0] === "--check";
const files = check ? args.slice(1) : args;
if (files.length === 0) fail("usage: hack/stylua.mjs [--check] FILE...");
let unformatted = 0;
for (const file of files) {
  const before = readFileSync(file, "utf8");
  const after = stylua.formatCode(before, configured(), undefined, stylua.OutputVerification.Full);
  if (after === before) continue;
  if (check) {
    console.log(`${file}: not formatted (hack/stylua.mjs ${file} formats it)`);
    unformatted += 1;
  } else {
    writeFileSync(file, after);
  }
}
process.exit(unformatted > 0 ? 1 : 0);
