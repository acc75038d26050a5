/*
 * extents: the data extents of a file or block device, for `ebs-fuse upload`.
 * Node's fs has no lseek, so SEEK_DATA/SEEK_HOLE live here.
 *
 *   extents PATH [START [MAX]]
 *
 * Prints on standard output:
 *   size BYTES               first line: the size (lseek SEEK_END, so block devices work too)
 *   data OFFSET LENGTH       one line per data extent at or after START, ascending,
 *                            at most MAX lines (default 4096); a caller that got MAX
 *                            lines asks again from the end of the last one
 *   unsupported              instead of data lines, when the filesystem cannot
 *                            tell holes (SEEK_DATA fails with EINVAL): the caller
 *                            treats [START, size) as data
 * Exit status 0; 1 with one line on standard error when PATH cannot be read.
 * MAX bounds the output of a heavily fragmented file, so the caller's memory is
 * bounded too.
 */
#define _GNU_SOURCE
#define _FILE_OFFSET_BITS 64
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const long long DEFAULT_MAX_EXTENTS = 4096;

static int parse_number(const char *text, long long *out) {
  char *end = NULL;
  errno = 0;
  long long value = strtoll(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0' || value < 0) return -1;
  *out = value;
  return 0;
}

static int fail(const char *what, const char *path) {
  fprintf(stderr, "extents: %s %s: %s\n", what, path, strerror(errno));
  return 1;
}

int main(int argc, char **argv) {
  if (argc < 2 || argc > 4) {
    fprintf(stderr, "usage: extents PATH [START [MAX]]\n");
    return 1;
  }
  const char *path = argv[1];
  long long start = 0;
  long long max_extents = DEFAULT_MAX_EXTENTS;
  if ((argc > 2 && parse_number(argv[2], &start) != 0) || (argc > 3 && (parse_number(argv[3], &max_extents) != 0 || max_extents < 1))) {
    fprintf(stderr, "extents: START and MAX must be non-negative integers (MAX at least 1)\n");
    return 1;
  }

  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fail("cannot open", path);
  off_t size = lseek(fd, 0, SEEK_END);
  if (size < 0) return fail("cannot find the size of", path);
  printf("size %lld\n", (long long)size);

  off_t position = (off_t)start;
  long long printed = 0;
  while (position < size && printed < max_extents) {
    off_t data = lseek(fd, position, SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) break; /* only a hole from here to the end */
      if (errno == EINVAL) {
        printf("unsupported\n");
        break;
      }
      return fail("SEEK_DATA failed on", path);
    }
    off_t hole = lseek(fd, data, SEEK_HOLE);
    if (hole < 0) return fail("SEEK_HOLE failed on", path);
    /* The file may have grown or shrunk since SEEK_END; report only up to the size printed. */
    if (hole > size) hole = size;
    if (hole <= data) break;
    printf("data %lld %lld\n", (long long)data, (long long)(hole - data));
    printed += 1;
    position = hole;
  }
  if (fflush(stdout) != 0 || ferror(stdout)) return fail("cannot write the extents of", path);
  close(fd);
  return 0;
}
