import path from 'node:path';

export const REPO_ROOT = path.resolve(__dirname, '..', '..', '..');
/** The product as users run it, built by scripts/setup.sh. */
export const CLI_PATH = path.join(REPO_ROOT, 'dist', 'cli.js');
export const BENCH_DIR = path.join(REPO_ROOT, 'scripts', 'bench');
export const TSX_PATH = path.join(REPO_ROOT, 'node_modules', '.bin', 'tsx');
/** Ignored by git (.gitignore: native/build/). */
export const NATIVE_BUILD_DIR = path.join(REPO_ROOT, 'native', 'build');
export const NULLFS_SOURCE = path.join(REPO_ROOT, 'native', 'nullfs', 'nullfs.c');
