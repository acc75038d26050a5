/*
 * nullfs: the FUSE ceiling for `npm run bench`. One file, /null, that accepts
 * every write and discards it, so a `dd` into it measures only the kernel, the
 * FUSE protocol and libfuse, never storage.
 *
 * Built twice from this source (scripts/bench/nullfs.ts):
 *   FUSE_USE_VERSION=31 against libfuse 3: 1 MiB writes (max_write set in init;
 *                        libfuse 3 negotiates max_pages with the kernel)
 *   FUSE_USE_VERSION=26 against libfuse 2.9: run with -o big_writes,max_write=131072,
 *                        the most libfuse 2 can take, as fuse-native gets
 *
 * At unmount it prints one line to stderr with the write calls it saw and the
 * largest one, so the bench can prove the write size it claims.
 */
#include <errno.h>
#include <fuse.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>

static const char *const FILE_NAME = "null";
/* Large enough for any benchmark, small enough for every tool's off_t. */
static const off_t FILE_SIZE_BYTES = (off_t)1 << 44; /* 16 TiB */

static atomic_ullong write_calls;
static atomic_ullong write_bytes;
static atomic_ullong largest_write_bytes;

static int is_file(const char *path) { return path[0] == '/' && strcmp(path + 1, FILE_NAME) == 0; }

static int fill_stat(const char *path, struct stat *st) {
  memset(st, 0, sizeof(*st));
  if (strcmp(path, "/") == 0) {
    st->st_mode = S_IFDIR | 0755;
    st->st_nlink = 2;
    return 0;
  }
  if (!is_file(path)) return -ENOENT;
  st->st_mode = S_IFREG | 0644;
  st->st_nlink = 1;
  st->st_size = FILE_SIZE_BYTES;
  return 0;
}

static int null_open(const char *path, struct fuse_file_info *fi) {
  (void)fi;
  return is_file(path) ? 0 : -ENOENT;
}

static int null_write(const char *path, const char *buf, size_t size, off_t offset, struct fuse_file_info *fi) {
  (void)path;
  (void)buf;
  (void)offset;
  (void)fi;
  atomic_fetch_add(&write_calls, 1);
  atomic_fetch_add(&write_bytes, size);
  unsigned long long seen = atomic_load(&largest_write_bytes);
  while (size > seen && !atomic_compare_exchange_weak(&largest_write_bytes, &seen, size)) {
  }
  return (int)size;
}

static int null_read(const char *path, char *buf, size_t size, off_t offset, struct fuse_file_info *fi) {
  (void)path;
  (void)offset;
  (void)fi;
  memset(buf, 0, size);
  return (int)size;
}

/* Without fsync the kernel would answer ENOSYS-as-success; answer it explicitly. */
static int null_fsync(const char *path, int datasync, struct fuse_file_info *fi) {
  (void)path;
  (void)datasync;
  (void)fi;
  return 0;
}

static int null_flush(const char *path, struct fuse_file_info *fi) {
  (void)path;
  (void)fi;
  return 0;
}

static void null_destroy(void *private_data) {
  (void)private_data;
  fprintf(stderr, "nullfs: writes=%llu bytes=%llu largest=%llu\n", (unsigned long long)atomic_load(&write_calls),
          (unsigned long long)atomic_load(&write_bytes), (unsigned long long)atomic_load(&largest_write_bytes));
}

#if FUSE_USE_VERSION >= 30

/* libfuse 3 caps max_write by the kernel's max_pages (256 pages = 1 MiB since Linux 4.20). */
static const unsigned MAX_WRITE_BYTES = 1u << 20;

static void *null_init(struct fuse_conn_info *conn, struct fuse_config *cfg) {
  conn->max_write = MAX_WRITE_BYTES;
  cfg->direct_io = 0;
  return NULL;
}

static int null_getattr(const char *path, struct stat *st, struct fuse_file_info *fi) {
  (void)fi;
  return fill_stat(path, st);
}

static int null_truncate(const char *path, off_t size, struct fuse_file_info *fi) {
  (void)size;
  (void)fi;
  return is_file(path) ? 0 : -ENOENT;
}

static int null_readdir(const char *path, void *buf, fuse_fill_dir_t filler, off_t offset, struct fuse_file_info *fi,
                        enum fuse_readdir_flags flags) {
  (void)offset;
  (void)fi;
  (void)flags;
  if (strcmp(path, "/") != 0) return -ENOENT;
  filler(buf, ".", NULL, 0, 0);
  filler(buf, "..", NULL, 0, 0);
  filler(buf, FILE_NAME, NULL, 0, 0);
  return 0;
}

#else

static void *null_init(struct fuse_conn_info *conn) {
  (void)conn;
  return NULL;
}

static int null_getattr(const char *path, struct stat *st) { return fill_stat(path, st); }

static int null_truncate(const char *path, off_t size) {
  (void)size;
  return is_file(path) ? 0 : -ENOENT;
}

static int null_readdir(const char *path, void *buf, fuse_fill_dir_t filler, off_t offset, struct fuse_file_info *fi) {
  (void)offset;
  (void)fi;
  if (strcmp(path, "/") != 0) return -ENOENT;
  filler(buf, ".", NULL, 0);
  filler(buf, "..", NULL, 0);
  filler(buf, FILE_NAME, NULL, 0);
  return 0;
}

#endif

static const struct fuse_operations operations = {
    .getattr = null_getattr,
    .truncate = null_truncate,
    .open = null_open,
    .read = null_read,
    .write = null_write,
    .flush = null_flush,
    .fsync = null_fsync,
    .readdir = null_readdir,
    .init = null_init,
    .destroy = null_destroy,
};

int main(int argc, char *argv[]) { return fuse_main(argc, argv, &operations, NULL); }
