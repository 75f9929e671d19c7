// Compiles every contracts/src/*.sol with the pinned solc from npm and writes
// contracts/out/<Name>.json = {abi, bytecode, deployedBytecode}. Output is deterministic: the same
// sources and compiler give the same bytes.
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const solc = require('solc');

const root = __dirname;
const srcDir = path.join(root, 'src');
const outDir = path.join(root, 'out');

const files = fs
  .readdirSync(srcDir)
  .filter((f) => f.endsWith('.sol'))
  .sort();

const sources = {};
for (const file of files) {
  sources[file] = { content: fs.readFileSync(path.join(srcDir, file), 'utf8') };
}

const input = {
  language: 'Solidity',
  sources,
  settings: {
    optimizer: { enabled: true, runs: 200 },
    evmVersion: 'cancun',
    // No metadata hash: a comment change does not change the bytecode.
    metadata: { bytecodeHash: 'none' },
    outputSelection: {
      '*': { '*': ['abi', 'evm.bytecode.object', 'evm.deployedBytecode.object'] },
    },
  },
};

const output = JSON.parse(solc.compile(JSON.stringify(input)));
const errors = (output.errors || []).filter((e) => e.severity === 'error');
for (const e of output.errors || []) {
  process.stderr.write(e.formattedMessage + '\n');
}
if (errors.length > 0) {
  process.exit(1);
}

fs.mkdirSync(outDir, { recursive: true });
for (const file of files) {
  const name = path.basename(file, '.sol');
  const contract = output.contracts[file] && output.contracts[file][name];
  if (!contract) {
    process.stderr.write(`${file}: no contract named ${name}\n`);
    process.exit(1);
  }
  const artifact = {
    abi: contract.abi,
    bytecode: '0x' + contract.evm.bytecode.object,
    deployedBytecode: '0x' + contract.evm.deployedBytecode.object,
  };
  fs.writeFileSync(path.join(outDir, `${name}.json`), JSON.stringify(artifact, null, 2) + '\n');
  process.stdout.write(`${name}: ${contract.evm.deployedBytecode.object.length / 2} bytes runtime\n`);
}
process.stdout.write(`solc ${solc.version()}\n`);
