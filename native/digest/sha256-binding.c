// SHA-256 of a block on the libuv pool, without copying it: the mount hashes
// every block it uploads, and on the event loop that hash sat between dd's
// writes (docs/BENCHMARKS.md). crypto.subtle.digest also runs on the pool, but
// copies each block into memory of its own first, which cost more system time
// than the hash saved. The buffer is held by a reference until the hash is done;
// the caller must not change it meanwhile (the flusher hashes a block's stable
// upload view). OpenSSL is Node's own: its symbols resolve against the node binary.
#include <node_api.h>
#include <openssl/sha.h>
#include <stdlib.h>

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref buffer_ref;
  const unsigned char *data;
  size_t length;
  unsigned char digest[SHA256_DIGEST_LENGTH];
} DigestJob;

static void execute(napi_env env, void *arg) {
  (void)env;
  DigestJob *job = arg;
  SHA256(job->data, job->length, job->digest);
}

static void complete(napi_env env, napi_status status, void *arg) {
  DigestJob *job = arg;
  napi_value result;
  void *copy;
  if (status == napi_ok && napi_create_buffer_copy(env, SHA256_DIGEST_LENGTH, job->digest, &copy, &result) == napi_ok) {
    napi_resolve_deferred(env, job->deferred, result);
  } else {
    napi_value message, error;
    napi_create_string_utf8(env, "the SHA-256 job did not run", NAPI_AUTO_LENGTH, &message);
    napi_create_error(env, NULL, message, &error);
    napi_reject_deferred(env, job->deferred, error);
  }
  napi_delete_reference(env, job->buffer_ref);
  napi_delete_async_work(env, job->work);
  free(job);
}

// sha256(buffer: Buffer) => Promise<Buffer>
static napi_value sha256(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], promise, name;
  bool is_buffer = false;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 ||
      napi_is_buffer(env, argv[0], &is_buffer) != napi_ok || !is_buffer) {
    napi_throw_type_error(env, NULL, "sha256 takes one Buffer");
    return NULL;
  }
  DigestJob *job = calloc(1, sizeof(*job));
  if (job == NULL) {
    napi_throw_error(env, NULL, "out of memory");
    return NULL;
  }
  void *data;
  if (napi_get_buffer_info(env, argv[0], &data, &job->length) != napi_ok ||
      napi_create_reference(env, argv[0], 1, &job->buffer_ref) != napi_ok) {
    free(job);
    napi_throw_error(env, NULL, "sha256: the buffer could not be held");
    return NULL;
  }
  job->data = data;
  napi_create_string_utf8(env, "ebs-fuse:sha256", NAPI_AUTO_LENGTH, &name);
  if (napi_create_promise(env, &job->deferred, &promise) != napi_ok ||
      napi_create_async_work(env, NULL, name, execute, complete, job, &job->work) != napi_ok ||
      napi_queue_async_work(env, job->work) != napi_ok) {
    napi_delete_reference(env, job->buffer_ref);
    free(job);
    napi_throw_error(env, NULL, "sha256: the job could not be queued");
    return NULL;
  }
  return promise;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_value fn;
  napi_create_function(env, "sha256", NAPI_AUTO_LENGTH, sha256, NULL, &fn);
  napi_set_named_property(env, exports, "sha256", fn);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
