/*
 * fuse3-binding: an N-API addon that mounts the one-file directory through
 * libfuse 3, the faster of ebs-fuse's two FUSE paths (fuse-native, libfuse 2.9,
 * is the other).
 *
 * Why it exists, measured in docs/BENCHMARKS.md:
 *   - libfuse 3 negotiates 1 MiB writes with the kernel; libfuse 2.9 stops at 128 KiB.
 *   - a write of the one file is copied here, on the FUSE thread, into a bounded
 *     ring that JavaScript owns, and answered at once. The writer then no longer
 *     waits for the event loop, which is busy hashing and uploading; JavaScript
 *     applies the queued writes in order. Reads, fsync, flush and every other
 *     operation wait, in JavaScript, until the writes queued before them are
 *     applied, so no caller can see the difference except in its timing. A queued
 *     write the core refuses is reported by the next fsync or close of each handle
 *     open for writing at the time, as a page-cache writeback error would be.
 *   - every other operation is forwarded to JavaScript and its FUSE thread waits
 *     for the answer, at most the operation's timeout (then ETIMEDOUT).
 *
 * Writes past what JavaScript declared as absorbable (the file's size; nothing on
 * a read-only mount), or larger than half the ring, are forwarded like any other
 * operation, so their errno comes from the core, synchronously.
 *
 * This file only moves calls and bytes; src/fuse/fuse3.ts gives it the
 * fuse-native-shaped interface the adapter uses.
 */
#define FUSE_USE_VERSION 31
#define NAPI_VERSION 8
#include <errno.h>
#include <fuse.h>
#include <node_api.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>

/* 1 MiB: what libfuse 3 and the kernel (max_pages, since 4.20) agree to. */
#define WRITE_MAX_BYTES (1024 * 1024)

enum op {
  OP_INIT,
  OP_EXIT,
  OP_WRITE_QUEUED,
  OP_GETATTR,
  OP_READDIR,
  OP_OPEN,
  OP_READ,
  OP_WRITE,
  OP_STATFS,
  OP_FLUSH,
  OP_RELEASE,
  OP_FSYNC,
  OP_TRUNCATE,
  OP_UTIMENS,
  OP_CHMOD,
  OP_CHOWN,
  OP_CREATE,
  OP_MKNOD,
  OP_UNLINK,
  OP_RMDIR,
  OP_MKDIR,
  OP_SYMLINK,
  OP_RENAME,
  OP_LINK,
  OP_COUNT
};

/* One forwarded operation. Owned jointly by the FUSE thread that waits for it and
 * by the JavaScript External that answers it; freed when both let go. */
struct request {
  pthread_mutex_t lock;
  pthread_cond_t answered_cond;
  int refs;
  int answered;
  int abandoned; /* the FUSE thread timed out and returned: no output pointer is valid */
  int result;
  enum op op;
  struct stat *stat_out;
  struct statvfs *statvfs_out;
  char *read_out;
  size_t read_length;
  void *dir_out;
  fuse_fill_dir_t dir_filler;
  uint64_t handle_out;
};

struct event {
  enum op op;
  struct request *request; /* NULL for events nobody waits for */
  char *path;
  char *path2;
  double a, b, c;
  void *data; /* a copy of a forwarded write's bytes */
  size_t data_length;
};

struct session {
  struct fuse *fuse;
  pthread_t loop_thread;
  int loop_started;
  int destroyed;
  /* Set when Node's environment is torn down while mounted (process.exit): from then
   * on nothing may call the threadsafe function. Under call_lock. */
  pthread_mutex_t call_lock;
  int env_closing;
  napi_threadsafe_function tsfn;
  napi_ref ring_ref;
  char *file_path;
  unsigned timeouts_ms[OP_COUNT];

  /* The write ring, and everything below, under ring_lock. */
  pthread_mutex_t ring_lock;
  pthread_cond_t ring_freed_cond;
  char *ring;
  size_t ring_bytes;
  size_t ring_head; /* oldest byte not yet applied by JavaScript */
  size_t ring_tail; /* where the next queued write goes */
  size_t ring_used; /* bytes between head and tail, skipped tails included */
  unsigned queued_writes;
  unsigned queued_writes_max;
  double absorb_below_bytes; /* writes ending past this are forwarded */
  unsigned write_wait_ms;
  int exiting;
};

static void request_release(struct request *request) {
  if (__atomic_sub_fetch(&request->refs, 1, __ATOMIC_ACQ_REL) != 0) return;
  pthread_mutex_destroy(&request->lock);
  pthread_cond_destroy(&request->answered_cond);
  free(request);
}

static void event_free(struct event *event) {
  free(event->path);
  free(event->path2);
  free(event->data);
  free(event);
}

/* Queues an event for the JavaScript thread; napi_closing once Node's environment
 * is being torn down (the threadsafe function is then freed, so it must not be called). */
static napi_status call_js_thread(struct session *session, struct event *event) {
  pthread_mutex_lock(&session->call_lock);
  napi_status status = session->env_closing ? napi_closing : napi_call_threadsafe_function(session->tsfn, event, napi_tsfn_nonblocking);
  pthread_mutex_unlock(&session->call_lock);
  return status;
}

static struct session *current_session(void) { return (struct session *)fuse_get_context()->private_data; }

static void deadline_after(struct timespec *deadline, unsigned timeout_ms) {
  clock_gettime(CLOCK_REALTIME, deadline);
  deadline->tv_sec += timeout_ms / 1000;
  deadline->tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
  if (deadline->tv_nsec >= 1000000000L) {
    deadline->tv_sec += 1;
    deadline->tv_nsec -= 1000000000L;
  }
}

static struct event *event_new(enum op op, const char *path) {
  struct event *event = calloc(1, sizeof(*event));
  if (event == NULL) return NULL;
  event->op = op;
  if (path != NULL) event->path = strdup(path);
  return event;
}

/* Hands the event to JavaScript and waits for its answer; returns the result,
 * and for OP_OPEN the handle through handle_out. */
static int forward_with_handle(struct session *session, struct event *event, struct request *request, uint64_t *handle_out) {
  request->refs = 2;
  request->op = event->op;
  pthread_mutex_init(&request->lock, NULL);
  pthread_cond_init(&request->answered_cond, NULL);
  event->request = request;
  /* Read before the call: from then on the event belongs to the JavaScript thread. */
  unsigned timeout_ms = session->timeouts_ms[event->op];
  if (call_js_thread(session, event) != napi_ok) {
    event_free(event);
    request_release(request);
    request_release(request);
    return -EIO;
  }
  struct timespec deadline;
  if (timeout_ms > 0) deadline_after(&deadline, timeout_ms);
  pthread_mutex_lock(&request->lock);
  int timed_out = 0;
  while (!request->answered && !timed_out) {
    if (timeout_ms == 0) pthread_cond_wait(&request->answered_cond, &request->lock);
    else timed_out = pthread_cond_timedwait(&request->answered_cond, &request->lock, &deadline) == ETIMEDOUT;
  }
  int result = request->answered ? request->result : -ETIMEDOUT;
  if (handle_out != NULL) *handle_out = request->handle_out;
  request->abandoned = 1;
  pthread_mutex_unlock(&request->lock);
  request_release(request);
  return result;
}

static int forward(struct session *session, struct event *event, struct request *request) {
  return forward_with_handle(session, event, request, NULL);
}

/* A request on the heap, so that a late answer after a timeout writes nowhere. */
static struct request *request_new(void) { return calloc(1, sizeof(struct request)); }

/* The event and the request of one forwarded operation, or -ENOMEM with neither. */
static int prepare(enum op op, const char *path, struct event **event_out, struct request **request_out) {
  *event_out = event_new(op, path);
  *request_out = request_new();
  if (*event_out != NULL && *request_out != NULL) return 0;
  if (*event_out != NULL) event_free(*event_out);
  free(*request_out);
  return -ENOMEM;
}

static int forward_simple(enum op op, const char *path, const char *path2, double a, double b, double c) {
  struct session *session = current_session();
  struct event *event;
  struct request *request;
  if (prepare(op, path, &event, &request) != 0) return -ENOMEM;
  if (path2 != NULL) event->path2 = strdup(path2);
  event->a = a;
  event->b = b;
  event->c = c;
  return forward(session, event, request);
}

static void *op_init(struct fuse_conn_info *conn, struct fuse_config *config) {
  struct session *session = current_session();
  conn->max_write = WRITE_MAX_BYTES;
  /* The kernel's write-back cache would acknowledge writes past the end of the
   * file, which is fixed in size; keep every write going through here. */
  conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
  /* Without it the kernel sends O_TRUNC as a truncate to 0, as libfuse 2.9 does,
   * instead of a flag of open that the adapter would have to act on. */
  conn->want &= ~FUSE_CAP_ATOMIC_O_TRUNC;
  config->kernel_cache = 0;
  /* fuse_destroy would otherwise unlink hidden files from the JavaScript thread,
   * which would wait for itself; the adapter refuses renames anyway. */
  config->hard_remove = 1;
  struct event *event = event_new(OP_INIT, NULL);
  if (event != NULL && call_js_thread(session, event) != napi_ok) event_free(event);
  return session;
}

static int op_getattr(const char *path, struct stat *st, struct fuse_file_info *fi) {
  struct session *session = current_session();
  struct event *event;
  struct request *request;
  if (prepare(OP_GETATTR, path, &event, &request) != 0) return -ENOMEM;
  event->c = fi ? (double)fi->fh : 0;
  memset(st, 0, sizeof(*st));
  request->stat_out = st;
  return forward(session, event, request);
}

static int op_readdir(const char *path, void *buf, fuse_fill_dir_t filler, off_t offset, struct fuse_file_info *fi,
                      enum fuse_readdir_flags flags) {
  (void)offset;
  (void)fi;
  (void)flags;
  struct session *session = current_session();
  struct event *event;
  struct request *request;
  if (prepare(OP_READDIR, path, &event, &request) != 0) return -ENOMEM;
  request->dir_out = buf;
  request->dir_filler = filler;
  return forward(session, event, request);
}

static int op_open(const char *path, struct fuse_file_info *fi) {
  struct session *session = current_session();
  struct event *event;
  struct request *request;
  if (prepare(OP_OPEN, path, &event, &request) != 0) return -ENOMEM;
  event->a = fi->flags;
  uint64_t handle = 0;
  int result = forward_with_handle(session, event, request, &handle);
  if (result == 0) fi->fh = handle;
  /* The kernel keeps no page cache of the file: each write goes from the
   * writer's buffer to libfuse in one copy, not into cached pages first (8-20 %
   * more throughput, 6-12 % less CPU per GiB, docs/BENCHMARKS.md), nothing is
   * left to drop at unmount, and a read always sees the core's bytes. The price:
   * shared mappings of the file fail with ENODEV (libfuse 3.14 cannot ask for
   * FUSE_DIRECT_IO_ALLOW_MMAP); private ones still read. */
  fi->direct_io = 1;
  return result;
}

static int op_read(const char *path, char *buf, size_t size, off_t offset, struct fuse_file_info *fi) {
  struct session *session = current_session();
  struct event *event;
  struct request *request;
  if (prepare(OP_READ, path, &event, &request) != 0) return -ENOMEM;
  event->a = (double)size;
  event->b = (double)offset;
  event->c = (double)fi->fh;
  request->read_out = buf;
  request->read_length = size;
  return forward(session, event, request);
}

/* Room for `size` contiguous bytes, waiting while JavaScript catches up. Called
 * with ring_lock held; returns the offset, or -errno. */
static long ring_reserve(struct session *session, size_t size) {
  struct timespec deadline;
  deadline_after(&deadline, session->write_wait_ms);
  for (;;) {
    if (session->exiting) return -EIO;
    size_t skipped = session->ring_tail + size > session->ring_bytes ? session->ring_bytes - session->ring_tail : 0;
    if (session->ring_used + skipped + size <= session->ring_bytes &&
        session->queued_writes < session->queued_writes_max) {
      if (skipped > 0) session->ring_tail = 0;
      size_t offset = session->ring_tail;
      session->ring_tail += size;
      if (session->ring_tail == session->ring_bytes) session->ring_tail = 0;
      session->ring_used += skipped + size;
      session->queued_writes += 1;
      return (long)offset;
    }
    if (session->write_wait_ms == 0) pthread_cond_wait(&session->ring_freed_cond, &session->ring_lock);
    else if (pthread_cond_timedwait(&session->ring_freed_cond, &session->ring_lock, &deadline) == ETIMEDOUT) return -ETIMEDOUT;
  }
}

static int op_write(const char *path, const char *buf, size_t size, off_t offset, struct fuse_file_info *fi) {
  struct session *session = current_session();
  pthread_mutex_lock(&session->ring_lock);
  int absorb = size > 0 && strcmp(path, session->file_path) == 0 && offset >= 0 &&
               (double)offset + (double)size <= session->absorb_below_bytes && size <= session->ring_bytes / 2;
  if (absorb) {
    /* Reserve, copy and queue under one lock: JavaScript frees the ring in the
     * order the events reach it, so they must reach it in ring order. */
    size_t tail_before = session->ring_tail, used_before = session->ring_used;
    long ring_offset = ring_reserve(session, size);
    if (ring_offset < 0) {
      pthread_mutex_unlock(&session->ring_lock);
      return (int)ring_offset;
    }
    memcpy(session->ring + ring_offset, buf, size);
    struct event *event = event_new(OP_WRITE_QUEUED, NULL);
    int queued = event != NULL;
    if (queued) {
      event->a = (double)ring_offset;
      event->b = (double)size;
      event->c = (double)offset;
      queued = call_js_thread(session, event) == napi_ok;
      if (!queued) event_free(event);
    }
    if (!queued) {
      session->ring_tail = tail_before;
      session->ring_used = used_before;
      session->queued_writes -= 1;
    }
    pthread_mutex_unlock(&session->ring_lock);
    return queued ? (int)size : -EIO;
  }
  pthread_mutex_unlock(&session->ring_lock);

  struct event *event;
  struct request *request;
  if (prepare(OP_WRITE, path, &event, &request) != 0) return -ENOMEM;
  void *copy = malloc(size > 0 ? size : 1);
  if (copy == NULL) {
    event_free(event);
    free(request);
    return -ENOMEM;
  }
  memcpy(copy, buf, size);
  event->data = copy;
  event->data_length = size;
  event->a = (double)size;
  event->b = (double)offset;
  event->c = (double)fi->fh;
  return forward(session, event, request);
}

static int op_statfs(const char *path, struct statvfs *out) {
  struct session *session = current_session();
  struct event *event;
  struct request *request;
  if (prepare(OP_STATFS, path, &event, &request) != 0) return -ENOMEM;
  memset(out, 0, sizeof(*out));
  request->statvfs_out = out;
  return forward(session, event, request);
}

static int op_flush(const char *path, struct fuse_file_info *fi) { return forward_simple(OP_FLUSH, path, NULL, 0, 0, (double)fi->fh); }
static int op_release(const char *path, struct fuse_file_info *fi) {
  return forward_simple(OP_RELEASE, path, NULL, 0, 0, (double)fi->fh);
}
static int op_fsync(const char *path, int datasync, struct fuse_file_info *fi) {
  return forward_simple(OP_FSYNC, path, NULL, datasync, 0, (double)fi->fh);
}
static int op_truncate(const char *path, off_t size, struct fuse_file_info *fi) {
  return forward_simple(OP_TRUNCATE, path, NULL, (double)size, 0, fi ? (double)fi->fh : 0);
}
static int op_utimens(const char *path, const struct timespec tv[2], struct fuse_file_info *fi) {
  (void)tv;
  (void)fi;
  return forward_simple(OP_UTIMENS, path, NULL, 0, 0, 0);
}
static int op_chmod(const char *path, mode_t mode, struct fuse_file_info *fi) {
  (void)fi;
  return forward_simple(OP_CHMOD, path, NULL, mode, 0, 0);
}
static int op_chown(const char *path, uid_t uid, gid_t gid, struct fuse_file_info *fi) {
  (void)fi;
  return forward_simple(OP_CHOWN, path, NULL, uid, gid, 0);
}
static int op_create(const char *path, mode_t mode, struct fuse_file_info *fi) {
  (void)fi;
  return forward_simple(OP_CREATE, path, NULL, mode, 0, 0);
}
static int op_mknod(const char *path, mode_t mode, dev_t dev) { return forward_simple(OP_MKNOD, path, NULL, mode, (double)dev, 0); }
static int op_unlink(const char *path) { return forward_simple(OP_UNLINK, path, NULL, 0, 0, 0); }
static int op_rmdir(const char *path) { return forward_simple(OP_RMDIR, path, NULL, 0, 0, 0); }
static int op_mkdir(const char *path, mode_t mode) { return forward_simple(OP_MKDIR, path, NULL, mode, 0, 0); }
static int op_symlink(const char *target, const char *path) { return forward_simple(OP_SYMLINK, target, path, 0, 0, 0); }
static int op_rename(const char *from, const char *to, unsigned int flags) {
  return forward_simple(OP_RENAME, from, to, flags, 0, 0);
}
static int op_link(const char *from, const char *to) { return forward_simple(OP_LINK, from, to, 0, 0, 0); }

static const struct fuse_operations operations = {
    .init = op_init,
    .getattr = op_getattr,
    .readdir = op_readdir,
    .open = op_open,
    .read = op_read,
    .write = op_write,
    .statfs = op_statfs,
    .flush = op_flush,
    .release = op_release,
    .fsync = op_fsync,
    .truncate = op_truncate,
    .utimens = op_utimens,
    .chmod = op_chmod,
    .chown = op_chown,
    .create = op_create,
    .mknod = op_mknod,
    .unlink = op_unlink,
    .rmdir = op_rmdir,
    .mkdir = op_mkdir,
    .symlink = op_symlink,
    .rename = op_rename,
    .link = op_link,
};

static void *loop_main(void *arg) {
  struct session *session = arg;
  int result = fuse_loop_mt(session->fuse, 0);
  pthread_mutex_lock(&session->ring_lock);
  session->exiting = 1;
  pthread_cond_broadcast(&session->ring_freed_cond);
  pthread_mutex_unlock(&session->ring_lock);
  struct event *event = event_new(OP_EXIT, NULL);
  if (event != NULL) {
    event->a = result;
    if (call_js_thread(session, event) != napi_ok) event_free(event);
  }
  return NULL;
}

/* ---- N-API side: everything below runs on the JavaScript thread ---- */

#define CHECK(env, call)                                                                                                  \
  do {                                                                                                                    \
    if ((call) != napi_ok) {                                                                                              \
      napi_throw_error((env), NULL, "fuse3-binding: " #call " failed");                                                 \
      return NULL;                                                                                                        \
    }                                                                                                                     \
  } while (0)

static void request_external_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  request_release((struct request *)data);
}

static napi_value number(napi_env env, double value) {
  napi_value result;
  napi_create_double(env, value, &result);
  return result;
}

static napi_value string_or_undefined(napi_env env, const char *text) {
  napi_value result;
  if (text == NULL) napi_get_undefined(env, &result);
  else napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &result);
  return result;
}

static void fail_request(struct request *request, int result) {
  pthread_mutex_lock(&request->lock);
  if (!request->answered) {
    request->answered = 1;
    request->result = result;
    pthread_cond_signal(&request->answered_cond);
  }
  pthread_mutex_unlock(&request->lock);
}

/* handler(op, request | undefined, path, path2, a, b, c, data | undefined) */
static void call_js(napi_env env, napi_value handler, void *context, void *data) {
  (void)context;
  struct event *event = data;
  if (env == NULL) {
    if (event->request != NULL) {
      fail_request(event->request, -EIO);
      request_release(event->request);
    }
    event_free(event);
    return;
  }
  napi_value argv[8];
  argv[0] = number(env, event->op);
  if (event->request != NULL) {
    if (napi_create_external(env, event->request, request_external_finalize, NULL, &argv[1]) != napi_ok) {
      fail_request(event->request, -EIO);
      request_release(event->request);
      event_free(event);
      return;
    }
  } else {
    napi_get_undefined(env, &argv[1]);
  }
  argv[2] = string_or_undefined(env, event->path);
  argv[3] = string_or_undefined(env, event->path2);
  argv[4] = number(env, event->a);
  argv[5] = number(env, event->b);
  argv[6] = number(env, event->c);
  if (event->data != NULL) {
    void *copy;
    napi_create_buffer_copy(env, event->data_length, event->data, &copy, &argv[7]);
  } else {
    napi_get_undefined(env, &argv[7]);
  }
  event_free(event);
  napi_value global;
  napi_get_global(env, &global);
  napi_call_function(env, global, handler, 8, argv, NULL);
}

static double get_double(napi_env env, napi_value value) {
  double result = 0;
  napi_get_value_double(env, value, &result);
  return result;
}

static double element_double(napi_env env, napi_value array, uint32_t index) {
  napi_value element;
  if (napi_get_element(env, array, index, &element) != napi_ok) return 0;
  return get_double(env, element);
}

static void fill_stat(napi_env env, napi_value values, struct stat *st) {
  /* [mode, uid, gid, size, nlink, blksize, blocks, atimeMs, mtimeMs, ctimeMs] */
  st->st_mode = (mode_t)element_double(env, values, 0);
  st->st_uid = (uid_t)element_double(env, values, 1);
  st->st_gid = (gid_t)element_double(env, values, 2);
  st->st_size = (off_t)element_double(env, values, 3);
  st->st_nlink = (nlink_t)element_double(env, values, 4);
  st->st_blksize = (blksize_t)element_double(env, values, 5);
  st->st_blocks = (blkcnt_t)element_double(env, values, 6);
  double times_ms[3] = {element_double(env, values, 7), element_double(env, values, 8), element_double(env, values, 9)};
  struct timespec *times[3] = {&st->st_atim, &st->st_mtim, &st->st_ctim};
  for (int i = 0; i < 3; i++) {
    times[i]->tv_sec = (time_t)(times_ms[i] / 1000);
    times[i]->tv_nsec = (long)((times_ms[i] - (double)times[i]->tv_sec * 1000) * 1000000);
  }
}

static void fill_statvfs(napi_env env, napi_value values, struct statvfs *out) {
  /* [bsize, frsize, blocks, bfree, bavail, files, ffree, favail, fsid, flag, namemax] */
  out->f_bsize = (unsigned long)element_double(env, values, 0);
  out->f_frsize = (unsigned long)element_double(env, values, 1);
  out->f_blocks = (fsblkcnt_t)element_double(env, values, 2);
  out->f_bfree = (fsblkcnt_t)element_double(env, values, 3);
  out->f_bavail = (fsblkcnt_t)element_double(env, values, 4);
  out->f_files = (fsfilcnt_t)element_double(env, values, 5);
  out->f_ffree = (fsfilcnt_t)element_double(env, values, 6);
  out->f_favail = (fsfilcnt_t)element_double(env, values, 7);
  out->f_fsid = (unsigned long)element_double(env, values, 8);
  out->f_flag = (unsigned long)element_double(env, values, 9);
  out->f_namemax = (unsigned long)element_double(env, values, 10);
}

/* reply(request, result, payload?) -> taken: the answer to a forwarded operation.
 * A second answer, or one after the FUSE thread gave up (its timeout), is ignored
 * and returns false. */
static napi_value js_reply(napi_env env, napi_callback_info info) {
  int accepted = 0;
  size_t argc = 3;
  napi_value argv[3];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  struct request *request;
  CHECK(env, napi_get_value_external(env, argv[0], (void **)&request));
  int result = (int)get_double(env, argv[1]);
  pthread_mutex_lock(&request->lock);
  if (!request->answered && !request->abandoned) {
    if (result >= 0 && argc >= 3) {
      switch (request->op) {
        case OP_GETATTR:
          fill_stat(env, argv[2], request->stat_out);
          break;
        case OP_STATFS:
          fill_statvfs(env, argv[2], request->statvfs_out);
          break;
        case OP_OPEN:
          request->handle_out = (uint64_t)get_double(env, argv[2]);
          break;
        case OP_READ: {
          void *data;
          size_t length = 0;
          if (napi_get_buffer_info(env, argv[2], &data, &length) == napi_ok) {
            if (length > request->read_length) length = request->read_length;
            if ((size_t)result > length) result = (int)length;
            memcpy(request->read_out, data, (size_t)result);
          } else {
            result = 0;
          }
          break;
        }
        case OP_READDIR: {
          uint32_t count = 0;
          napi_get_array_length(env, argv[2], &count);
          for (uint32_t i = 0; i < count; i++) {
            napi_value element;
            char name[256];
            size_t length;
            if (napi_get_element(env, argv[2], i, &element) != napi_ok) continue;
            if (napi_get_value_string_utf8(env, element, name, sizeof(name), &length) != napi_ok) continue;
            request->dir_filler(request->dir_out, name, NULL, 0, 0);
          }
          break;
        }
        default:
          break;
      }
    }
    request->answered = 1;
    request->result = result;
    pthread_cond_signal(&request->answered_cond);
    accepted = 1;
  }
  pthread_mutex_unlock(&request->lock);
  napi_value taken;
  napi_get_boolean(env, accepted, &taken);
  return taken;
}

static struct session *get_session(napi_env env, napi_value value) {
  struct session *session = NULL;
  if (napi_get_value_external(env, value, (void **)&session) != napi_ok) return NULL;
  return session;
}

/* consumed(session, ringEnd): JavaScript applied the oldest queued write, which
 * ended at ringEnd; its bytes (and any tail skipped before it) are free again. */
static napi_value js_consumed(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  struct session *session = get_session(env, argv[0]);
  if (session == NULL) return NULL;
  size_t ring_end = (size_t)get_double(env, argv[1]);
  pthread_mutex_lock(&session->ring_lock);
  size_t freed = (ring_end + session->ring_bytes - session->ring_head) % session->ring_bytes;
  if (freed > session->ring_used) freed = session->ring_used;
  session->ring_used -= freed;
  session->ring_head = ring_end % session->ring_bytes;
  if (session->queued_writes > 0) session->queued_writes -= 1;
  if (session->ring_used == 0) session->ring_head = session->ring_tail;
  pthread_cond_broadcast(&session->ring_freed_cond);
  pthread_mutex_unlock(&session->ring_lock);
  return NULL;
}

/* setAbsorbBelow(session, bytes): writes that end past this go to JavaScript one by one. */
static napi_value js_set_absorb_below(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  struct session *session = get_session(env, argv[0]);
  if (session == NULL) return NULL;
  pthread_mutex_lock(&session->ring_lock);
  session->absorb_below_bytes = get_double(env, argv[1]);
  pthread_mutex_unlock(&session->ring_lock);
  return NULL;
}

static char *get_string(napi_env env, napi_value value) {
  size_t length = 0;
  if (napi_get_value_string_utf8(env, value, NULL, 0, &length) != napi_ok) return NULL;
  char *text = malloc(length + 1);
  if (text == NULL) return NULL;
  napi_get_value_string_utf8(env, value, text, length + 1, &length);
  return text;
}

static void session_free(struct session *session) {
  free(session->file_path);
  pthread_mutex_destroy(&session->ring_lock);
  pthread_mutex_destroy(&session->call_lock);
  pthread_cond_destroy(&session->ring_freed_cond);
  free(session);
}

/* Node tears its environment down (process.exit) while still mounted: the FUSE
 * threads answer EIO from then on instead of calling a freed threadsafe function. */
static void env_cleanup(void *data) {
  struct session *session = data;
  pthread_mutex_lock(&session->call_lock);
  session->env_closing = 1;
  pthread_mutex_unlock(&session->call_lock);
  pthread_mutex_lock(&session->ring_lock);
  session->exiting = 1;
  pthread_cond_broadcast(&session->ring_freed_cond);
  pthread_mutex_unlock(&session->ring_lock);
}

/* A session still mounted when its External is collected stays allocated: its
 * FUSE threads still use it. */
static void session_external_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  struct session *session = data;
  if (session->destroyed) session_free(session);
}

/*
 * mount(mountpoint, options, filePath, ring, timeoutsMs, limits, handler) -> session
 *   options     the -o string for libfuse ("fsname=…,subtype=…")
 *   ring        an ArrayBuffer that queued writes are copied into
 *   timeoutsMs  per op code, 0 for none
 *   limits      [queuedWritesMax, writeWaitMs, absorbBelowBytes]
 * Throws with libfuse's reason when the mount fails; handler(OP_INIT) follows
 * once the kernel finished the handshake.
 */
static napi_value js_mount(napi_env env, napi_callback_info info) {
  size_t argc = 7;
  napi_value argv[7];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 7) {
    napi_throw_type_error(env, NULL, "mount(mountpoint, options, filePath, ring, timeoutsMs, limits, handler)");
    return NULL;
  }
  struct session *session = calloc(1, sizeof(*session));
  if (session == NULL) {
    napi_throw_error(env, NULL, "fuse3-binding: out of memory");
    return NULL;
  }
  pthread_mutex_init(&session->ring_lock, NULL);
  pthread_mutex_init(&session->call_lock, NULL);
  pthread_cond_init(&session->ring_freed_cond, NULL);
  char *mountpoint = get_string(env, argv[0]);
  char *options = get_string(env, argv[1]);
  session->file_path = get_string(env, argv[2]);
  void *ring_data = NULL;
  size_t ring_bytes = 0;
  int ok = mountpoint != NULL && options != NULL && session->file_path != NULL &&
           napi_get_arraybuffer_info(env, argv[3], &ring_data, &ring_bytes) == napi_ok && ring_bytes >= 2 * WRITE_MAX_BYTES;
  if (!ok) {
    free(mountpoint);
    free(options);
    session_free(session);
    napi_throw_type_error(env, NULL, "fuse3-binding: bad mount arguments (the ring must hold two 1 MiB writes)");
    return NULL;
  }
  session->ring = ring_data;
  session->ring_bytes = ring_bytes;
  for (uint32_t op = 0; op < OP_COUNT; op++) session->timeouts_ms[op] = (unsigned)element_double(env, argv[4], op);
  session->queued_writes_max = (unsigned)element_double(env, argv[5], 0);
  session->write_wait_ms = (unsigned)element_double(env, argv[5], 1);
  session->absorb_below_bytes = element_double(env, argv[5], 2);
  if (session->queued_writes_max == 0) session->queued_writes_max = 1;

  napi_value name;
  napi_create_string_utf8(env, "fuse3-binding", NAPI_AUTO_LENGTH, &name);
  if (napi_create_threadsafe_function(env, argv[6], NULL, name, 0, 1, NULL, NULL, session, call_js, &session->tsfn) !=
      napi_ok) {
    free(mountpoint);
    free(options);
    session_free(session);
    napi_throw_error(env, NULL, "fuse3-binding: cannot create the thread-safe function");
    return NULL;
  }
  napi_create_reference(env, argv[3], 1, &session->ring_ref);

  char *fuse_argv[] = {"ebs-fuse", "-o", options, NULL};
  struct fuse_args args = FUSE_ARGS_INIT(3, fuse_argv);
  session->fuse = fuse_new(&args, &operations, sizeof(operations), session);
  const char *failure = NULL;
  int mounted = 0;
  if (session->fuse == NULL) failure = "fuse_new failed (libfuse printed why)";
  else if (fuse_mount(session->fuse, mountpoint) != 0) failure = "fuse_mount failed (libfuse printed why)";
  else if ((mounted = 1, pthread_create(&session->loop_thread, NULL, loop_main, session) != 0)) failure = "cannot start the FUSE thread";
  fuse_opt_free_args(&args);
  free(options);
  if (failure != NULL) {
    if (session->fuse != NULL) {
      if (mounted) fuse_unmount(session->fuse);
      fuse_destroy(session->fuse);
    }
    free(mountpoint);
    napi_release_threadsafe_function(session->tsfn, napi_tsfn_abort);
    napi_delete_reference(env, session->ring_ref);
    session_free(session);
    napi_throw_error(env, NULL, failure);
    return NULL;
  }
  free(mountpoint);
  session->loop_started = 1;
  napi_add_env_cleanup_hook(env, env_cleanup, session);
  napi_value result;
  CHECK(env, napi_create_external(env, session, session_external_finalize, NULL, &result));
  return result;
}

/* destroy(session): after OP_EXIT. Joins the FUSE thread (already returning),
 * lets libfuse release the device and frees the session. */
static napi_value js_destroy(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  struct session *session = get_session(env, argv[0]);
  if (session == NULL || !session->loop_started) return NULL;
  session->loop_started = 0;
  session->destroyed = 1;
  napi_remove_env_cleanup_hook(env, env_cleanup, session);
  pthread_join(session->loop_thread, NULL);
  fuse_unmount(session->fuse);
  fuse_destroy(session->fuse);
  napi_release_threadsafe_function(session->tsfn, napi_tsfn_release);
  napi_delete_reference(env, session->ring_ref);
  return NULL;
}

static napi_value init_module(napi_env env, napi_value exports) {
  struct {
    const char *name;
    napi_callback callback;
  } functions[] = {
      {"mount", js_mount}, {"reply", js_reply}, {"consumed", js_consumed}, {"setAbsorbBelow", js_set_absorb_below}, {"destroy", js_destroy},
  };
  for (size_t i = 0; i < sizeof(functions) / sizeof(functions[0]); i++) {
    napi_value fn;
    CHECK(env, napi_create_function(env, functions[i].name, NAPI_AUTO_LENGTH, functions[i].callback, NULL, &fn));
    CHECK(env, napi_set_named_property(env, exports, functions[i].name, fn));
  }
  napi_value write_max;
  CHECK(env, napi_create_uint32(env, WRITE_MAX_BYTES, &write_max));
  CHECK(env, napi_set_named_property(env, exports, "WRITE_MAX_BYTES", write_max));
  return exports;
}

#ifndef NODE_GYP_MODULE_NAME
#define NODE_GYP_MODULE_NAME fuse3_binding
#endif
NAPI_MODULE(NODE_GYP_MODULE_NAME, init_module)
