// `npm install <clone>/clients/typescript` (a directory or git dependency) runs this `prepare`
// script in the package's own directory, where nothing is installed yet: npm does not install a
// directory dependency's dependencies, nor the dev dependencies the build needs. So it installs
// them here from package-lock.json (without scripts, so that this does not run again), then
// compiles src/ to dist/ (JavaScript and .d.ts). In a checkout where they are installed, it only
// compiles. `npm pack` runs it too, which is how the packed tarball gets its dist/.
"use strict";
const { execFileSync } = require("node:child_process");
const fs = require("node:fs");
const path = require("node:path");

const root = path.resolve(__dirname, "..");
const tsc = path.join(root, "node_modules", "typescript", "bin", "tsc");
const run = (command, args) => execFileSync(command, args, { cwd: root, stdio: "inherit" });

if (!fs.existsSync(tsc) || !fs.existsSync(path.join(root, "node_modules", "@grpc", "grpc-js"))) {
  // The npm that runs this script, whatever is on PATH.
  const npm = process.env.npm_execpath ? [process.execPath, [process.env.npm_execpath]] : ["npm", []];
  run(npm[0], [...npm[1], "ci", "--ignore-scripts", "--include=dev", "--no-audit", "--no-fund", "--loglevel=error"]);
}
run(process.execPath, [tsc, "-p", "."]);
