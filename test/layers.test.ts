// The layers of src/ (docs/ARCHITECTURE.md) as a rule: every relative import
// of every file is checked against what its layer may import, and the two
// outside packages that belong to one layer each (fuse-native to src/fuse,
// commander to the CLI) are checked against who imports them. scripts/ may
// use src/ but never test/.
import { strict as assert } from 'node:assert';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';

const REPO = path.resolve(__dirname, '..');
const SRC = path.join(REPO, 'src');

/** Each layer and the layers it may import; a layer may always import itself. */
const ALLOWED: Record<string, string[]> = {
  shared: [],
  ebs: ['shared'],
  'local-ebs': ['ebs', 'shared'],
  core: ['ebs', 'shared'],
  fuse: ['core', 'shared'],
  commands: ['core', 'fuse', 'ebs', 'local-ebs', 'shared'],
  library: ['core', 'fuse', 'ebs', 'shared'],
  cli: ['commands', 'fuse', 'shared'],
};

/** Packages only some layers may import. */
const PACKAGE_OWNERS: Record<string, string[]> = {
  'fuse-native': ['fuse'],
  commander: ['commands', 'cli'],
};

function layerOf(file: string): string {
  const relative = path.relative(SRC, file);
  const [first] = relative.split(path.sep);
  if (relative === 'cli.ts') return 'cli';
  if (relative === 'index.ts') return 'library';
  if (!relative.includes(path.sep)) return 'shared';
  return first;
}

function sourceFiles(directory: string): string[] {
  return readdirSync(directory, { withFileTypes: true }).flatMap((entry) => {
    const full = path.join(directory, entry.name);
    if (entry.isDirectory()) return sourceFiles(full);
    return entry.name.endsWith('.ts') ? [full] : [];
  });
}

/** Every module a file imports or requires, as written. */
function importsOf(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  const specifiers = [
    ...text.matchAll(/^\s*(?:import|export)\s[^'"]*?from\s+'([^']+)'/gm),
    ...text.matchAll(/require\('([^']+)'\)/g),
    ...text.matchAll(/^\s*import\s+'([^']+)'/gm),
  ];
  return specifiers.map((match) => match[1]);
}

describe('layers: imports follow docs/ARCHITECTURE.md', () => {
  it('no file in src/ imports a layer above its own', () => {
    const violations: string[] = [];
    for (const file of sourceFiles(SRC)) {
      const layer = layerOf(file);
      for (const specifier of importsOf(file)) {
        if (specifier.startsWith('.')) {
          const target = layerOf(path.resolve(path.dirname(file), specifier));
          if (target !== layer && !ALLOWED[layer].includes(target))
            violations.push(`${path.relative(REPO, file)} (${layer}) imports ${specifier} (${target})`);
        } else {
          const owners = PACKAGE_OWNERS[specifier];
          if (owners && !owners.includes(layer))
            violations.push(`${path.relative(REPO, file)} (${layer}) imports ${specifier}, which only ${owners.join(', ')} may`);
        }
      }
    }
    assert.deepEqual(violations, []);
  });

  it('scripts/ never imports test/', () => {
    const violations = sourceFiles(path.join(REPO, 'scripts')).flatMap((file) =>
      importsOf(file)
        .filter(
          (specifier) =>
            specifier.startsWith('.') && path.resolve(path.dirname(file), specifier).startsWith(path.join(REPO, 'test') + path.sep),
        )
        .map((specifier) => `${path.relative(REPO, file)} imports ${specifier}`),
    );
    assert.deepEqual(violations, []);
  });

  it('the check sees imports: it knows every layer and finds the imports of a known file', () => {
    for (const file of sourceFiles(SRC))
      assert.ok(ALLOWED[layerOf(file)], `${path.relative(REPO, file)} is in an unknown layer ${layerOf(file)}`);
    assert.ok(importsOf(path.join(SRC, 'fuse', 'fuse-mount.ts')).includes('../core/file-errors'));
    assert.ok(importsOf(path.join(SRC, 'fuse', 'fuse-mount.ts')).includes('fuse-native'));
  });
});
