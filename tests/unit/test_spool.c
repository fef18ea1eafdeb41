/*
 * gateway/spool: CRC32C, the record format, append + durable for each queue.fsync mode (never synchronous, one
 * write per loop turn with batch), replay of exactly the records not retired (shared references, abandon),
 * segment rotation and deletion, torn tails and flipped bytes, max_bytes, a failing write (truncated back, the
 * next append stored), the directory lock, and a worker-count change. Each test uses its own directory under
 * /tmp and its own loop, which must close with nothing left on it.
 */
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gateway/spool.h"
#include "test.h"

#define MAX_ITER 100000

typedef struct {
  int calls, status;
  sp_rec_t *rec;
} dur_t;

static void on_durable(void *ud, int status, sp_rec_t *rec) {
  dur_t *d = ud;
  d->calls++;
  d->status = status;
  d->rec = rec;
}

static void on_done(void *ud) { (*(int *)ud)++; }

static char *mktmp(void) {
  static char path[64];
  snprintf(path, sizeof path, "/tmp/test_spool.XXXXXX");
  return strdup(mkdtemp(path));
}

static void rm_rf(const char *path) {
  char cmd[256];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
  CHECK_EQ_INT(system(cmd), 0);
}

static sp_t *open_sp(uv_loop_t *loop, const char *dir, unsigned worker, unsigned n_workers, sp_fsync_t mode,
                     uint64_t seg_bytes, uint64_t max_bytes) {
  sp_config_t cfg = {dir, worker, n_workers, mode, seg_bytes, max_bytes};
  sp_t *sp = NULL;
  char err[256] = "";
  int r = sp_open(loop, &cfg, &sp, err, sizeof err);
  if (r != 0) fprintf(stderr, "sp_open: %s\n", err);
  CHECK_EQ_INT(r, 0);
  return sp;
}

static void run_until(uv_loop_t *loop, const int *flag, int want) {
  for (int i = 0; i < MAX_ITER && *flag < want; i++) uv_run(loop, UV_RUN_ONCE);
  CHECK(*flag >= want);
}

static void close_sp(uv_loop_t *loop, sp_t *sp) {
  int done = 0;
  sp_close(sp, on_done, &done);
  run_until(loop, &done, 1);
  CHECK_EQ_INT(done, 1);
}

static void close_loop(uv_loop_t *loop) {
  uv_run(loop, UV_RUN_DEFAULT);
  CHECK_EQ_INT(uv_loop_close(loop), 0);
}

/* Appends one part of len bytes (filled with fill) and waits for durable. */
static sp_rec_t *append_wait(uv_loop_t *loop, sp_t *sp, int signal, size_t len, int fill, uint64_t items, int *st) {
  uint8_t *buf = malloc(len ? len : 1);
  memset(buf, fill, len);
  struct iovec iov = {buf, len};
  dur_t d = {0};
  int r = sp_append(sp, signal, &iov, 1, items, on_durable, &d);
  free(buf); /* copied before sp_append returns */
  if (r != 0) {
    *st = r;
    return NULL;
  }
  CHECK_EQ_INT(d.calls, 0); /* never inside sp_append */
  run_until(loop, &d.calls, 1);
  CHECK_EQ_INT(d.calls, 1);
  *st = d.status;
  return d.rec;
}

typedef struct {
  int n;
  int signal[64];
  size_t len[64];
  uint8_t first[64];
  uint64_t items[64];
  int uniform[64];
  sp_rec_t *rec[64];
} got_t;

static void on_replay(void *ud, int signal, const uint8_t *bytes, size_t len, uint64_t items, sp_rec_t *rec) {
  got_t *g = ud;
  if (g->n >= 64) {
    sp_rec_abandon(rec);
    return;
  }
  int i = g->n++;
  g->signal[i] = signal;
  g->len[i] = len;
  g->first[i] = len ? bytes[0] : 0;
  g->uniform[i] = 1;
  for (size_t k = 0; k < len; k++)
    if (bytes[k] != bytes[0]) g->uniform[i] = 0;
  g->items[i] = items;
  g->rec[i] = rec;
}

static int count_files(const char *dir, unsigned worker, off_t *sizes, char names[][300], int max) {
  char path[300];
  snprintf(path, sizeof path, "%s/w%u", dir, worker);
  DIR *d = opendir(path);
  if (!d) return 0;
  int n = 0;
  struct dirent *de;
  char found[64][300];
  while ((de = readdir(d)))
    if (strncmp(de->d_name, "seg-", 4) == 0 && n < 64 && strlen(path) + strlen(de->d_name) < 298) {
      strcpy(found[n], path);
      strcat(found[n], "/");
      strcat(found[n++], de->d_name);
    }
  closedir(d);
  /* sorted by name = by sequence number */
  for (int i = 0; i < n; i++)
    for (int k = i + 1; k < n; k++)
      if (strcmp(found[k], found[i]) < 0) {
        char t[300];
        memcpy(t, found[i], 300);
        memcpy(found[i], found[k], 300);
        memcpy(found[k], t, 300);
      }
  for (int i = 0; i < n && i < max; i++) {
    struct stat st;
    if (sizes) sizes[i] = stat(found[i], &st) == 0 ? st.st_size : -1;
    if (names) memcpy(names[i], found[i], 300);
  }
  return n;
}

/* ---- CRC32C --------------------------------------------------------------------------------------------- */

TEST(crc32c_vectors) {
  CHECK_EQ_INT(sp_crc32c(0, "123456789", 9), 0xE3069283u);
  CHECK_EQ_INT(sp__test_crc32c_sw(0, "123456789", 9), 0xE3069283u);
  CHECK_EQ_INT(sp_crc32c(0, "", 0), 0);
  uint8_t zeros[32] = {0}, ones[32];
  memset(ones, 0xff, sizeof ones);
  CHECK_EQ_INT(sp_crc32c(0, zeros, 32), 0x8A9136AAu); /* RFC 3720 B.4 */
  CHECK_EQ_INT(sp_crc32c(0, ones, 32), 0x62A8AB43u);
  CHECK_EQ_INT(sp__test_crc32c_sw(0, ones, 32), 0x62A8AB43u);
  /* chaining, and the hardware and table paths agree at every length and alignment */
  uint8_t buf[1000];
  uint32_t x = 12345;
  for (size_t i = 0; i < sizeof buf; i++) buf[i] = (uint8_t)((x = x * 1103515245 + 12345) >> 16);
  for (size_t off = 0; off < 9; off++)
    for (size_t len = 0; len + off <= sizeof buf; len += 37) {
      uint32_t a = sp_crc32c(0, buf + off, len);
      CHECK_EQ_INT(a, sp__test_crc32c_sw(0, buf + off, len));
      CHECK_EQ_INT(a, sp_crc32c(sp_crc32c(0, buf + off, len / 3), buf + off + len / 3, len - len / 3));
    }
}

/* ---- append, durable, replay ---------------------------------------------------------------------------- */

static void append_replay_mode(sp_fsync_t mode) {
  char *dir = mktmp();
  uv_loop_t loop;
  uv_loop_init(&loop);
  sp_t *sp = open_sp(&loop, dir, 0, 1, mode, 0, 0);
  CHECK_EQ_INT(sp_replay(sp, on_replay, NULL), 0);
  /* three appends in one turn: durable for none of them before the loop runs */
  dur_t d[3] = {{0}};
  uint8_t a[100], b[5000];
  memset(a, 'a', sizeof a);
  memset(b, 'b', sizeof b);
  struct iovec iov[2] = {{a, sizeof a}, {b, sizeof b}};
  CHECK_EQ_INT(sp_append(sp, 0, iov, 1, 7, on_durable, &d[0]), 0);
  CHECK_EQ_INT(sp_append(sp, 1, iov, 2, 8, on_durable, &d[1]), 0);
  CHECK_EQ_INT(sp_append(sp, 2, iov + 1, 1, 9, on_durable, &d[2]), 0);
  CHECK_EQ_INT(d[0].calls + d[1].calls + d[2].calls, 0);
  run_until(&loop, &d[2].calls, 1);
  run_until(&loop, &d[1].calls, 1);
  run_until(&loop, &d[0].calls, 1);
  for (int i = 0; i < 3; i++) {
    CHECK_EQ_INT(d[i].calls, 1);
    CHECK_EQ_INT(d[i].status, 0);
    CHECK(d[i].rec != NULL);
  }
  CHECK_EQ_INT(sp__test_writes(sp), mode == SP_FSYNC_ALWAYS ? 3 : 1);
  const sp_stats_t *st = sp_stats(sp);
  CHECK_EQ_INT(st->live_records, 3);
  CHECK_EQ_INT(st->live_bytes, 3 * 22 + 100 + 5100 + 5000);
  CHECK_EQ_INT(st->failing, 0);
  sp_rec_unref(d[1].rec); /* retired */
  sp_rec_abandon(d[2].rec);  /* stays */
  CHECK_EQ_INT(st->live_records, 2);
  sp_rec_abandon(d[0].rec);
  close_sp(&loop, sp);

  sp = open_sp(&loop, dir, 0, 1, mode, 0, 0);
  got_t g = {0};
  CHECK_EQ_INT(sp_replay(sp, on_replay, &g), 2);
  CHECK_EQ_INT(g.n, 2);
  CHECK_EQ_INT(g.signal[0], 0);
  CHECK_EQ_INT(g.len[0], 100);
  CHECK_EQ_INT(g.first[0], 'a');
  CHECK_EQ_INT(g.uniform[0], 1);
  CHECK_EQ_INT(g.items[0], 7);
  CHECK_EQ_INT(g.signal[1], 2);
  CHECK_EQ_INT(g.len[1], 5000);
  CHECK_EQ_INT(g.first[1], 'b');
  CHECK_EQ_INT(g.uniform[1], 1);
  CHECK_EQ_INT(g.items[1], 9);
  st = sp_stats(sp);
  CHECK_EQ_INT(st->replayed_records, 2);
  CHECK_EQ_INT(st->replayed_items, 16);
  CHECK_EQ_INT(st->corrupt_records, 0);
  CHECK_EQ_INT(st->live_records, 2);
  for (int i = 0; i < g.n; i++) sp_rec_unref(g.rec[i]);
  CHECK_EQ_INT(st->live_records, 0);
  close_sp(&loop, sp);

  /* everything retired: nothing replays, and only the active segment is left */
  sp = open_sp(&loop, dir, 0, 1, mode, 0, 0);
  memset(&g, 0, sizeof g);
  CHECK_EQ_INT(sp_replay(sp, on_replay, &g), 0);
  CHECK_EQ_INT(count_files(dir, 0, NULL, NULL, 0), 1);
  CHECK_EQ_INT(sp_stats(sp)->segments, 1);
  close_sp(&loop, sp);
  close_loop(&loop);
  rm_rf(dir);
  free(dir);
}

TEST(append_replay_batch) { append_replay_mode(SP_FSYNC_BATCH); }
TEST(append_replay_always) { append_replay_mode(SP_FSYNC_ALWAYS); }
TEST(append_replay_never) { append_replay_mode(SP_FSYNC_NEVER); }

TEST(many_appends_one_write) {
  char *dir = mktmp();
  uv_loop_t loop;
  uv_loop_init(&loop);
  sp_t *sp = open_sp(&loop, dir, 0, 1, SP_FSYNC_BATCH, 0, 0);
  sp_replay(sp, on_replay, NULL);
  enum { N = 200 };
  static dur_t d[N];
  memset(d, 0, sizeof d);
  uint8_t part[64];
  memset(part, 'p', sizeof part);
  struct iovec iov = {part, sizeof part};
  for (int i = 0; i < N; i++) CHECK_EQ_INT(sp_append(sp, 0, &iov, 1, 1, on_durable, &d[i]), 0);
  run_until(&loop, &d[N - 1].calls, 1);
  int ok = 0;
  for (int i = 0; i < N; i++) ok += d[i].calls == 1 && d[i].status == 0 && d[i].rec;
  CHECK_EQ_INT(ok, N);
  CHECK_EQ_INT(sp__test_writes(sp), 1);
  off_t size[4];
  CHECK_EQ_INT(count_files(dir, 0, size, NULL, 4), 1);
  CHECK_EQ_INT(size[0], N * (22 + 64));
  /* appends while a write is in flight: the next batch */
  dur_t x = {0}, y = {0};
  CHECK_EQ_INT(sp_append(sp, 0, &iov, 1, 1, on_durable, &x), 0);
  uv_run(&loop, UV_RUN_NOWAIT); /* the prepare handle starts x's write */
  CHECK_EQ_INT(sp__test_writes(sp), 2);
  CHECK_EQ_INT(sp_append(sp, 0, &iov, 1, 1, on_durable, &y), 0);
  run_until(&loop, &y.calls, 1);
  CHECK_EQ_INT(x.calls, 1);
  CHECK_EQ_INT(sp__test_writes(sp), 3);
  for (int i = 0; i < N; i++) sp_rec_abandon(d[i].rec);
  sp_rec_abandon(x.rec);
  sp_rec_abandon(y.rec);
  close_sp(&loop, sp);
  close_loop(&loop);
  rm_rf(dir);
  free(dir);
}

/* A part re-split onto two owners shares its record: retired by the last unref only. */
TEST(shared_refs_retire_on_last_unref) {
  char *dir = mktmp();
  uv_loop_t loop;
  uv_loop_init(&loop);
  sp_t *sp = open_sp(&loop, dir, 0, 1, SP_FSYNC_BATCH, 0, 0);
  sp_replay(sp, on_replay, NULL);
  int st;
  sp_rec_t *r1 = append_wait(&loop, sp, 0, 10, 'x', 1, &st);
  CHECK_EQ_INT(st, 0);
  sp_rec_t *r2 = append_wait(&loop, sp, 1, 10, 'y', 2, &st);
  sp_rec_ref(r1);
  sp_rec_ref(r1);
  sp_rec_unref(r1);
  sp_rec_unref(r1);
  CHECK_EQ_INT(sp_stats(sp)->live_records, 2);
  sp_rec_unref(r1);
  CHECK_EQ_INT(sp_stats(sp)->live_records, 1);
  sp_rec_ref(r2);
  sp_rec_unref(r2);
  sp_rec_abandon(r2); /* the last reference abandoned: stays */
  CHECK_EQ_INT(sp_stats(sp)->live_records, 1);
  close_sp(&loop, sp);
  sp = open_sp(&loop, dir, 0, 1, SP_FSYNC_BATCH, 0, 0);
  got_t g = {0};
  CHECK_EQ_INT(sp_replay(sp, on_replay, &g), 1);
  CHECK_EQ_INT(g.first[0], 'y');
  CHECK_EQ_INT(g.items[0], 2);
  sp_rec_abandon(g.rec[0]);
  close_sp(&loop, sp);
  close_loop(&loop);
  rm_rf(dir);
  free(dir);
}

TEST(rotation_and_deletion) {
  char *dir = mktmp();
  uv_loop_t loop;
  uv_loop_init(&loop);
  sp_t *sp = open_sp(&loop, dir, 0, 1, SP_FSYNC_BATCH, 300, 0);
  sp_replay(sp, on_replay, NULL);
  sp_rec_t *rec[10];
  int st;
  for (int i = 0; i < 10; i++) { /* 122-byte records: two per 300-byte segment */
    rec[i] = append_wait(&loop, sp, 0, 100, 'a' + i, (uint64_t)i, &st);
    CHECK_EQ_INT(st, 0);
  }
  off_t size[16];
  CHECK_EQ_INT(count_files(dir, 0, size, NULL, 16), 5);
  for (int i = 0; i < 5; i++) CHECK_EQ_INT(size[i], 244);
  CHECK_EQ_INT(sp_stats(sp)->segments, 5);
  /* one record of a full segment retired: it stays; both: it goes */
  sp_rec_unref(rec[0]);
  CHECK_EQ_INT(count_files(dir, 0, NULL, NULL, 0), 5);
  sp_rec_unref(rec[1]);
  int done = 0;
  for (int i = 0; i < MAX_ITER && count_files(dir, 0, NULL, NULL, 0) != 4; i++) uv_run(&loop, UV_RUN_NOWAIT);
  CHECK_EQ_INT(count_files(dir, 0, NULL, NULL, 0), 4);
  CHECK_EQ_INT(sp_stats(sp)->segments, 4);
  sp_rec_unref(rec[2]); /* its tombstone is in the active segment; rec[3] stays */
  for (int i = 4; i < 10; i++) sp_rec_abandon(rec[i]);
  sp_rec_abandon(rec[3]);
  sp_close(sp, on_done, &done);
  run_until(&loop, &done, 1);
  /* replay: records 3..9 (2 retired by its tombstone), the fully retired old active segment unlinked */
  sp = open_sp(&loop, dir, 0, 1, SP_FSYNC_BATCH, 300, 0);
  got_t g = {0};
  CHECK_EQ_INT(sp_replay(sp, on_replay, &g), 7);
  for (int i = 0; i < g.n; i++) CHECK_EQ_INT(g.items[i], i + 3);
  for (int i = 0; i < g.n; i++) sp_rec_unref(g.rec[i]);
  for (int i = 0; i < MAX_ITER && count_files(dir, 0, NULL, NULL, 0) != 1; i++) uv_run(&loop, UV_RUN_NOWAIT);
  CHECK_EQ_INT(count_files(dir, 0, NULL, NULL, 0), 1); /* only the active one */
  CHECK_EQ_INT(sp_stats(sp)->segments, 1);
  CHECK_EQ_INT(sp_stats(sp)->live_bytes, 0);
  close_sp(&loop, sp);
  /* sequence numbers keep increasing across restarts */
  char names[4][300];
  CHECK_EQ_INT(count_files(dir, 0, NULL, names, 4), 1);
  sp = open_sp(&loop, dir, 0, 1, SP_FSYNC_BATCH, 300, 0);
  CHECK_EQ_INT(sp_replay(sp, on_replay, NULL), 0);
  char names2[4][300];
  CHECK_EQ_INT(count_files(dir, 0, NULL, names2, 4), 1);
  CHECK(strcmp(names2[0], names[0]) > 0);
  close_sp(&loop, sp);
  close_loop(&loop);
  rm_rf(dir);
  free(dir);
}

/* Five records; the second's payload byte flipped, the last cut mid-record: the other three replay. */
TEST(torn_tail_and_flipped_byte) {
  char *dir = mktmp();
  uv_loop_t loop;
  uv_loop_init(&loop);
  sp_t *sp = open_sp(&loop, dir, 0, 1, SP_FSYNC_BATCH, 0, 0);
  sp_replay(sp, on_replay, NULL);
  int st;
  for (int i = 0; i < 5; i++) sp_rec_abandon(append_wait(&loop, sp, 0, 50, 'a' + i, (uint64_t)i + 1, &st));
  close_sp(&loop, sp);
  char names[4][300];
  off_t size[4];
  CHECK_EQ_INT(count_files(dir, 0, size, names, 4), 1);
  CHECK_EQ_INT(size[0], 5 * 72);
  int fd = open(names[0], O_RDWR);
  CHECK(fd >= 0);
  CHECK_EQ_INT(pwrite(fd, "Z", 1, 72 + 40), 1);
  CHECK_EQ_INT(ftruncate(fd, 4 * 72 + 30), 0);
  close(fd);
  sp = open_sp(&loop, dir, 0, 1, SP_FSYNC_BATCH, 0, 0);
  got_t g = {0};
  CHECK_EQ_INT(sp_replay(sp, on_replay, &g), 3);
  CHECK_EQ_INT(g.first[0], 'a');
  CHECK_EQ_INT(g.first[1], 'c');
  CHECK_EQ_INT(g.first[2], 'd');
  CHECK_EQ_INT(sp_stats(sp)->corrupt_records, 2);
  CHECK_EQ_INT(sp_stats(sp)->replayed_items, 1 + 3 + 4);
  for (int i = 0; i < g.n; i++) sp_rec_unref(g.rec[i]);
  close_sp(&loop, sp);
  close_loop(&loop);
  rm_rf(dir);
  free(dir);
}

TEST(scan_segment_bounds) {
  /* a length past the end, garbage, a bare magic: never read past len, each counted once */
  uint8_t buf[64];
  memset(buf, 0, sizeof buf);
  memcpy(buf, "OTLS", 4);
  buf[4] = 0xff;
  CHECK_EQ_INT(sp_scan_segment(buf, sizeof buf, NULL, NULL), 1);
  CHECK_EQ_INT(sp_scan_segment(buf, 4, NULL, NULL), 1);
  CHECK_EQ_INT(sp_scan_segment(buf, 0, NULL, NULL), 0);
  CHECK_EQ_INT(sp_scan_segment((const uint8_t *)"garbage", 7, NULL, NULL), 1);
}

TEST(max_bytes_enospc) {
  char *dir = mktmp();
  uv_loop_t loop;
  uv_loop_init(&loop);
  sp_t *sp = open_sp(&loop, dir, 0, 1, SP_FSYNC_BATCH, 0, 300);
  sp_replay(sp, on_replay, NULL);
  uint8_t part[100] = {0};
  struct iovec iov = {part, sizeof part};
  dur_t d[3] = {{0}};
  CHECK_EQ_INT(sp_append(sp, 0, &iov, 1, 1, on_durable, &d[0]), 0);
  CHECK_EQ_INT(sp_append(sp, 0, &iov, 1, 1, on_durable, &d[1]), 0); /* 244: pending bytes count too */
  CHECK_EQ_INT(sp_append(sp, 0, &iov, 1, 1, on_durable, &d[2]), UV_ENOSPC);
  run_until(&loop, &d[1].calls, 1);
  CHECK_EQ_INT(d[0].status, 0);
  CHECK_EQ_INT(d[2].calls, 0);
  CHECK_EQ_INT(sp_append(sp, 0, &iov, 1, 1, on_durable, &d[2]), UV_ENOSPC); /* durable ones count */
  sp_rec_unref(d[0].rec);
  CHECK_EQ_INT(sp_append(sp, 0, &iov, 1, 1, on_durable, &d[2]), 0); /* room again */
  run_until(&loop, &d[2].calls, 1);
  CHECK_EQ_INT(d[2].status, 0);
  sp_rec_abandon(d[1].rec);
  sp_rec_abandon(d[2].rec);
  close_sp(&loop, sp);
  close_loop(&loop);
  rm_rf(dir);
  free(dir);
}

TEST(write_failure_truncates_and_recovers) {
  char *dir = mktmp();
  uv_loop_t loop;
  uv_loop_init(&loop);
  sp_t *sp = open_sp(&loop, dir, 0, 1, SP_FSYNC_BATCH, 0, 0);
  sp_replay(sp, on_replay, NULL);
  int st;
  sp_rec_t *first = append_wait(&loop, sp, 0, 40, 'f', 1, &st);
  CHECK_EQ_INT(st, 0);
  sp__test_fail_next_write(sp, UV_ENOSPC);
  uint8_t part[500];
  memset(part, 'q', sizeof part);
  struct iovec iov = {part, sizeof part};
  dur_t d[3] = {{0}};
  for (int i = 0; i < 3; i++) CHECK_EQ_INT(sp_append(sp, 0, &iov, 1, 1, on_durable, &d[i]), 0);
  run_until(&loop, &d[2].calls, 1);
  for (int i = 0; i < 3; i++) {
    CHECK_EQ_INT(d[i].calls, 1);
    CHECK_EQ_INT(d[i].status, UV_ENOSPC);
    CHECK(d[i].rec == NULL);
  }
  CHECK_EQ_INT(sp_stats(sp)->failing, 1);
  CHECK_EQ_INT(sp_stats(sp)->write_errors, 3);
  CHECK_EQ_INT(sp_stats(sp)->live_records, 1);
  off_t size[4];
  CHECK_EQ_INT(count_files(dir, 0, size, NULL, 4), 1);
  CHECK_EQ_INT(size[0], 62); /* the half-written batch is gone */
  sp_rec_t *after = append_wait(&loop, sp, 1, 30, 'g', 2, &st);
  CHECK_EQ_INT(st, 0);
  CHECK_EQ_INT(sp_stats(sp)->failing, 0);
  sp_rec_abandon(first);
  sp_rec_abandon(after);
  close_sp(&loop, sp);
  sp = open_sp(&loop, dir, 0, 1, SP_FSYNC_BATCH, 0, 0);
  got_t g = {0};
  CHECK_EQ_INT(sp_replay(sp, on_replay, &g), 2);
  CHECK_EQ_INT(g.first[0], 'f');
  CHECK_EQ_INT(g.first[1], 'g');
  CHECK_EQ_INT(sp_stats(sp)->corrupt_records, 0);
  for (int i = 0; i < g.n; i++) sp_rec_abandon(g.rec[i]);
  close_sp(&loop, sp);
  close_loop(&loop);
  rm_rf(dir);
  free(dir);
}

/* sp_close flushes what is pending: an append made just before it is still answered. */
TEST(close_flushes_pending) {
  char *dir = mktmp();
  uv_loop_t loop;
  uv_loop_init(&loop);
  sp_t *sp = open_sp(&loop, dir, 0, 1, SP_FSYNC_BATCH, 0, 0);
  sp_replay(sp, on_replay, NULL);
  uint8_t part[10] = {1};
  struct iovec iov = {part, sizeof part};
  dur_t d = {0};
  CHECK_EQ_INT(sp_append(sp, 0, &iov, 1, 1, on_durable, &d), 0);
  int done = 0;
  sp_close(sp, on_done, &done);
  run_until(&loop, &done, 1);
  CHECK_EQ_INT(d.calls, 1);
  CHECK_EQ_INT(d.status, 0);
  if (d.rec) sp_rec_unref(d.rec); /* after close: nothing retired, frees the spool */
  close_loop(&loop);
  uv_loop_init(&loop);
  sp = open_sp(&loop, dir, 0, 1, SP_FSYNC_BATCH, 0, 0);
  got_t g = {0};
  CHECK_EQ_INT(sp_replay(sp, on_replay, &g), 1);
  for (int i = 0; i < g.n; i++) sp_rec_abandon(g.rec[i]);
  close_sp(&loop, sp);
  close_loop(&loop);
  rm_rf(dir);
  free(dir);
}

TEST(lock_dir) {
  char *dir = mktmp();
  char sub[300], err[512];
  snprintf(sub, sizeof sub, "%s/a/b/spool", dir);
  int fd = sp_lock_dir(sub, err, sizeof err);
  CHECK(fd >= 0);
  int fd2 = sp_lock_dir(sub, err, sizeof err);
  CHECK_EQ_INT(fd2, -1);
  char want[512];
  snprintf(want, sizeof want, "backends.queue.directory %s: held by another running gateway (pid %ld)", sub,
           (long)getpid());
  CHECK_EQ_STR(err, want);
  close(fd);
  fd2 = sp_lock_dir(sub, err, sizeof err); /* released */
  CHECK(fd2 >= 0);
  close(fd2);
  /* not a directory: the reason names the path */
  char file[300];
  snprintf(file, sizeof file, "%s/file", dir);
  int f = open(file, O_CREAT | O_WRONLY, 0644);
  close(f);
  snprintf(sub, sizeof sub, "%s/file/spool", dir);
  CHECK_EQ_INT(sp_lock_dir(sub, err, sizeof err), -1);
  CHECK_CONTAINS(err, sub);
  CHECK_CONTAINS(err, "Not a directory");
  rm_rf(dir);
  free(dir);
}

/* Two workers before, one now: worker 0 replays w1 and retires its records through its own tombstones. */
TEST(worker_count_change) {
  char *dir = mktmp();
  uv_loop_t loop;
  uv_loop_init(&loop);
  sp_t *sp1 = open_sp(&loop, dir, 1, 2, SP_FSYNC_BATCH, 0, 0);
  sp_replay(sp1, on_replay, NULL);
  int st;
  sp_rec_abandon(append_wait(&loop, sp1, 0, 20, 'm', 5, &st));
  sp_rec_abandon(append_wait(&loop, sp1, 1, 20, 'n', 6, &st));
  close_sp(&loop, sp1);
  sp_t *sp = open_sp(&loop, dir, 0, 1, SP_FSYNC_BATCH, 0, 0);
  got_t g = {0};
  CHECK_EQ_INT(sp_replay(sp, on_replay, &g), 2);
  CHECK_EQ_INT(g.first[0], 'm');
  CHECK_EQ_INT(g.first[1], 'n');
  CHECK_EQ_INT(g.items[1], 6);
  sp_rec_unref(g.rec[0]);
  sp_rec_abandon(g.rec[1]);
  close_sp(&loop, sp);
  sp = open_sp(&loop, dir, 0, 1, SP_FSYNC_BATCH, 0, 0);
  memset(&g, 0, sizeof g);
  CHECK_EQ_INT(sp_replay(sp, on_replay, &g), 1);
  CHECK_EQ_INT(g.first[0], 'n');
  sp_rec_unref(g.rec[0]);
  close_sp(&loop, sp);
  /* w1's highest segment stays as an empty file (its sequence numbers never go back) */
  off_t size[4];
  CHECK_EQ_INT(count_files(dir, 1, size, NULL, 4), 1);
  CHECK_EQ_INT(size[0], 0);
  sp = open_sp(&loop, dir, 0, 1, SP_FSYNC_BATCH, 0, 0);
  CHECK_EQ_INT(sp_replay(sp, on_replay, NULL), 0);
  close_sp(&loop, sp);
  close_loop(&loop);
  rm_rf(dir);
  free(dir);
}

static void count_rec(void *ud, int type, const uint8_t *payload, size_t plen, uint32_t offset) { (*(int *)ud)++; }

/* The fuzzer's seeds (tests/fuzz/make_spool_seeds.py, its own CRC32C) read as the generator meant them. */
TEST(fuzz_seeds_scan) {
  static const struct { const char *name; int records, corrupt; } seeds[] = {
      {"valid_three", 3, 0}, {"valid_with_retire", 5, 0}, {"torn_tail", 2, 1}, {"flipped_byte", 2, 1},
      {"length_past_end", 2, 1}, {"empty_payload", 3, 0}};
  char dir[512];
  snprintf(dir, sizeof dir, "%s", __FILE__);
  char *slash = strrchr(dir, '/');
  CHECK(slash != NULL);
  if (!slash) return;
  *slash = '\0';
  for (size_t i = 0; i < sizeof seeds / sizeof seeds[0]; i++) {
    char path[700];
    snprintf(path, sizeof path, "%s/../fuzz/corpus/spool/%s", dir, seeds[i].name);
    FILE *f = fopen(path, "rb");
    CHECK(f != NULL);
    if (!f) continue;
    uint8_t buf[4096];
    size_t len = fread(buf, 1, sizeof buf, f);
    fclose(f);
    int n = 0;
    size_t bad = sp_scan_segment(buf, len, count_rec, &n);
    if (n != seeds[i].records || (int)bad != seeds[i].corrupt) fprintf(stderr, "seed %s\n", seeds[i].name);
    CHECK_EQ_INT(n, seeds[i].records);
    CHECK_EQ_INT(bad, seeds[i].corrupt);
  }
}

TEST_MAIN()
