/*
 * gateway/spool — see spool.h. One writer per worker loop: appends and tombstones queue in memory (pending); a
 * uv_prepare handle (started while something is pending, so it runs before the loop blocks) closes the turn's
 * batch and hands it to one job on the loop's thread pool (uv_queue_work), which does the blocking part: opening
 * the next segment when the batch would pass segment_bytes, one pwritev at the segment's end, one fdatasync
 * (queue.fsync), and on a failed or short write an ftruncate back to the last good offset, so a segment never
 * keeps a half record. One job at most is in flight; what is appended meanwhile is the next batch, started when
 * the job reports back. Every field the job reads is its own (sp_job_t) or immutable while it runs.
 *
 * Live accounting per segment (DATA records not retired, count and record bytes) is in memory: replay rebuilds
 * it from the segments and their RETIRE records. A RETIRE record names the segment as (directory index << 48 |
 * sequence number), so worker 0's tombstones for the records it replays from w<N> (N >= n_workers) never
 * collide with its own. Worker 0 truncates, rather than unlinks, the highest segment of such a directory once it
 * is retired, so that directory's sequence numbers never go back if it becomes a worker's again.
 */
#define _GNU_SOURCE /* O_CLOEXEC, O_DIRECTORY */
#include "gateway/spool.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <nmmintrin.h>
#define SP_HW_CRC 1
#endif

#define SP_MAGIC 0x534c544fu   /* 'O','T','L','S' read as a little-endian u32 */
#define SP_HDR 13              /* magic | length | crc | type */
#define SP_DATA_HDR 9          /* signal u8 | items u64 */
#define SP_RETIRE_LEN 12       /* segment u64 | offset u32 */
#define SP_TYPE_DATA 1
#define SP_TYPE_RETIRE 2
#define SP_DEFAULT_SEGMENT (64ull << 20)
#define SP_MAX_SEGMENT (1ull << 31) /* offsets are u32 */
#define SP_SEQ_MASK ((1ull << 48) - 1)
#define SP_IOV_MAX 1024

/* ---- CRC32C ------------------------------------------------------------------------------------------ */

static uint32_t crc_table[8][256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;
static int crc_hw;

static void crc_init(void) {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1;
    crc_table[0][i] = c;
  }
  for (uint32_t i = 0; i < 256; i++)
    for (int t = 1; t < 8; t++) crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xff];
#ifdef SP_HW_CRC
  __builtin_cpu_init();
  crc_hw = __builtin_cpu_supports("sse4.2");
#endif
}

/* Slicing-by-8 over the raw (not inverted) register. */
static uint32_t crc_sw(uint32_t c, const uint8_t *p, size_t len) {
  while (len && ((uintptr_t)p & 7)) {
    c = (c >> 8) ^ crc_table[0][(c ^ *p++) & 0xff];
    len--;
  }
  while (len >= 8) {
    uint32_t lo, hi;
    memcpy(&lo, p, 4);
    memcpy(&hi, p + 4, 4);
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
    lo = __builtin_bswap32(lo);
    hi = __builtin_bswap32(hi);
#endif
    lo ^= c;
    c = crc_table[7][lo & 0xff] ^ crc_table[6][(lo >> 8) & 0xff] ^ crc_table[5][(lo >> 16) & 0xff] ^
        crc_table[4][lo >> 24] ^ crc_table[3][hi & 0xff] ^ crc_table[2][(hi >> 8) & 0xff] ^
        crc_table[1][(hi >> 16) & 0xff] ^ crc_table[0][hi >> 24];
    p += 8;
    len -= 8;
  }
  while (len--) c = (c >> 8) ^ crc_table[0][(c ^ *p++) & 0xff];
  return c;
}

#ifdef SP_HW_CRC
__attribute__((target("sse4.2"))) static uint32_t crc_hw_run(uint32_t c, const uint8_t *p, size_t len) {
  uint64_t c64 = c;
  while (len >= 8) {
    uint64_t v;
    memcpy(&v, p, 8);
    c64 = _mm_crc32_u64(c64, v);
    p += 8;
    len -= 8;
  }
  c = (uint32_t)c64;
  while (len--) c = _mm_crc32_u8(c, *p++);
  return c;
}
#endif

uint32_t sp_crc32c(uint32_t crc, const void *data, size_t len) {
  pthread_once(&crc_once, crc_init);
#ifdef SP_HW_CRC
  if (crc_hw) return ~crc_hw_run(~crc, data, len);
#endif
  return ~crc_sw(~crc, data, len);
}

/* Test hook: the table path, whatever the CPU has. */
uint32_t sp__test_crc32c_sw(uint32_t crc, const void *data, size_t len) {
  pthread_once(&crc_once, crc_init);
  return ~crc_sw(~crc, data, len);
}

static void put32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t get32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t get64(const uint8_t *p) { return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32; }

/* ---- the segment reader --------------------------------------------------------------------------------- */

/* The next offset >= from where the magic starts, or len. */
static size_t find_magic(const uint8_t *buf, size_t len, size_t from) {
  static const uint8_t m[4] = {'O', 'T', 'L', 'S'};
  if (from >= len || len - from < 4) return len;
  const uint8_t *hit = memmem(buf + from, len - from, m, 4);
  return hit ? (size_t)(hit - buf) : len;
}

size_t sp_scan_segment(const uint8_t *buf, size_t len,
                       void (*fn)(void *ud, int type, const uint8_t *payload, size_t plen, uint32_t offset), void *ud) {
  size_t pos = 0, corrupt = 0;
  while (pos < len) {
    size_t rest = len - pos;
    if (rest >= SP_HDR && get32(buf + pos) == SP_MAGIC) {
      size_t plen = get32(buf + pos + 4);
      /* a length past the end is a torn tail (or a corrupt length): never read past len */
      if (plen <= rest - SP_HDR && sp_crc32c(0, buf + pos + 12, 1 + plen) == get32(buf + pos + 8)) {
        if (fn) fn(ud, buf[pos + 12], buf + pos + SP_HDR, plen, (uint32_t)pos);
        pos += SP_HDR + plen;
        continue;
      }
    }
    corrupt++; /* a bad record (or garbage) here: resynchronise on the next magic */
    pos = find_magic(buf, len, pos + 1);
  }
  return corrupt;
}

/* ---- types ---------------------------------------------------------------------------------------------- */

typedef struct sp_seg {
  struct sp_seg *next;
  uint64_t seq;
  unsigned dir;          /* w<dir> */
  uint64_t size;         /* the active one: the next write offset */
  uint64_t live_count, live_bytes;
  int active;            /* being written: never deleted */
  int pinned;            /* not replayed yet, or being replayed: never deleted */
  int keep_name;         /* the highest segment of a foreign directory: truncated, not unlinked */
} sp_seg_t;

struct sp_rec {
  sp_t *sp;
  sp_seg_t *seg;
  uint32_t offset, size;
  unsigned refs;
};

typedef struct sp_ent { /* a record waiting to be written, or in the job */
  struct sp_ent *next;
  int data;
  void (*durable)(void *ud, int status, sp_rec_t *rec);
  void *ud;
  uint64_t offset;
  size_t len;
  uint8_t buf[];
} sp_ent_t;

typedef struct sp_job {
  uv_work_t w;
  sp_t *sp;
  /* in */
  int fd, old_fd;
  uint64_t off;
  struct iovec *iov;
  size_t n_iov, total;
  int sync, rotate, fail_err;
  int may_rotate;     /* !rotate into a non-empty segment: out of space there, the batch goes to a new one */
  struct sp_seg *seg; /* rotate, may_rotate: the next segment's (loop side only) */
  char new_path[PATH_MAX], dir_path[PATH_MAX];
  /* out */
  int new_fd, status, broken;
  uint64_t moved_from; /* may_rotate used: the offset the batch was first written at (its records start at 0) */
} sp_job_t;

struct sp {
  uv_loop_t *loop;
  char *root;      /* cfg->directory */
  char *wdir;      /* <root>/w<worker> */
  unsigned worker;
  sp_fsync_t fsync;
  uint64_t seg_bytes, max_bytes;
  sp_seg_t *segs;  /* replay order; the active one last */
  sp_seg_t *active;
  int fd;
  uint64_t next_seq;
  int broken;      /* the active segment may end in a half record (a truncate failed): rotate first */
  sp_ent_t *pend, **pend_tail;
  sp_ent_t *flight; /* the job's entries */
  struct iovec *iov;
  size_t iov_cap;
  sp_job_t job;
  int busy, in_cb, replayed;
  uv_prepare_t prep;
  int prep_on;
  uint64_t reserved; /* DATA bytes pending or in the job */
  size_t n_recs, n_reqs;
  int closing, fd_closing, closed, prep_closed;
  void (*done)(void *ud);
  void *done_ud;
  sp_stats_t st;
  uint64_t writes;
  int fail_next;
};

static void sp_step_close(sp_t *sp);
static void sp_flush(sp_t *sp);

static void seg_path(char *out, size_t n, const char *root, unsigned dir, uint64_t seq) {
  snprintf(out, n, "%s/w%u/seg-%016" PRIx64 ".log", root, dir, seq);
}

static int map_err(int e) { return e == ENOSPC || e == EFBIG || e == EDQUOT ? UV_ENOSPC : -e; }

static void maybe_free(sp_t *sp) {
  if (!sp->closed || sp->n_recs) return;
  while (sp->segs) {
    sp_seg_t *s = sp->segs;
    sp->segs = s->next;
    free(s);
  }
  free(sp->iov);
  free(sp->root);
  free(sp->wdir);
  free(sp);
}

/* ---- deleting segments ---------------------------------------------------------------------------------- */

typedef struct sp_drop {
  uv_work_t w;
  sp_t *sp;
  int keep_name;
  char path[PATH_MAX];
} sp_drop_t;

static void drop_work(uv_work_t *w) {
  sp_drop_t *d = (sp_drop_t *)w;
  if (d->keep_name) (void)!truncate(d->path, 0);
  else unlink(d->path);
}

static void drop_after(uv_work_t *w, int status) {
  sp_drop_t *d = (sp_drop_t *)w;
  sp_t *sp = d->sp;
  free(d);
  sp->n_reqs--;
  if (sp->closing) sp_step_close(sp);
}

/* Removes s (live count 0, not active, not pinned) from the list and its file from disk: off the loop, or now
 * (blocking) during replay. */
static void seg_drop(sp_t *sp, sp_seg_t *s, int now) {
  for (sp_seg_t **pp = &sp->segs; *pp; pp = &(*pp)->next)
    if (*pp == s) {
      *pp = s->next;
      break;
    }
  sp->st.segments--;
  sp_drop_t *d = calloc(1, sizeof *d);
  if (!d) {
    free(s);
    return; /* stays on disk: replayed (and retired again) next start */
  }
  d->sp = sp;
  d->keep_name = s->keep_name;
  seg_path(d->path, sizeof d->path, sp->root, s->dir, s->seq);
  free(s);
  if (now) {
    drop_work(&d->w);
    free(d);
    return;
  }
  sp->n_reqs++;
  if (uv_queue_work(sp->loop, &d->w, drop_work, drop_after) != 0) {
    sp->n_reqs--;
    drop_work(&d->w);
    free(d);
  }
}

static void seg_maybe_drop(sp_t *sp, sp_seg_t *s) {
  if (s->live_count == 0 && !s->active && !s->pinned && !sp->closing) seg_drop(sp, s, 0);
}

/* ---- the writer ---------------------------------------------------------------------------------------- */

static void prep_cb(uv_prepare_t *h) {
  sp_t *sp = h->data;
  uv_prepare_stop(h);
  sp->prep_on = 0;
  sp_flush(sp);
}

static void arm_prepare(sp_t *sp) {
  if (sp->prep_on || sp->closing || sp->busy) return; /* a busy writer starts the next batch itself */
  uv_prepare_start(&sp->prep, prep_cb);
  sp->prep_on = 1;
}

static void enqueue(sp_t *sp, sp_ent_t *e) {
  e->next = NULL;
  *sp->pend_tail = e;
  sp->pend_tail = &e->next;
  arm_prepare(sp);
}

/* Opens the next segment (j->new_path) and makes it the job's file at offset 0; the old one is closed. */
static int job_rotate(sp_job_t *j) {
  int fd = open(j->new_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return map_err(errno);
  if (j->sync) { /* the new name must survive a power cut with the data */
    int dfd = open(j->dir_path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
      fsync(dfd);
      close(dfd);
    }
  }
  if (j->old_fd >= 0) close(j->old_fd);
  j->new_fd = j->fd = fd;
  j->off = 0;
  return 0;
}

static void job_write(sp_job_t *j);

static void job_work(uv_work_t *w) {
  sp_job_t *j = (sp_job_t *)w;
  j->status = 0;
  j->broken = 0;
  j->new_fd = -1;
  j->moved_from = 0;
  if (j->rotate && (j->status = job_rotate(j)) != 0) return;
  job_write(j);
  /* Out of space in a segment that has records already: a per-file limit (RLIMIT_FSIZE, a quota on file size)
   * or a segment the file system cannot grow. The batch goes to a new segment at once, so the clients it covers
   * are not refused for where the old segment ended; on a full disk this fails the same way. The old one was
   * truncated back to where the batch began and goes when its records are retired. */
  if (j->status == UV_ENOSPC && j->may_rotate && !j->broken) {
    uint64_t from = j->off;
    int err = job_rotate(j);
    if (err == 0) {
      j->status = 0;
      j->moved_from = from;
      job_write(j);
    }
  }
}

/* Writes the batch at j->off (fdatasync with j->sync); on failure truncates back to j->off (j->broken if that
 * fails too) and sets j->status. */
static void job_write(sp_job_t *j) {
  size_t want = j->total, done = 0, i = 0, skip = 0;
  if (j->fail_err) want = j->total / 2; /* test hook: a partial write, then the error */
  int err = 0;
  while (done < want) {
    /* the iovecs from entry i on, the first advanced by skip bytes, capped to what is still wanted */
    struct iovec v[SP_IOV_MAX];
    size_t nv = 0, sum = 0;
    for (size_t k = i; k < j->n_iov && nv < SP_IOV_MAX && sum < want - done; k++) {
      v[nv].iov_base = (uint8_t *)j->iov[k].iov_base + (k == i ? skip : 0);
      v[nv].iov_len = j->iov[k].iov_len - (k == i ? skip : 0);
      if (v[nv].iov_len > want - done - sum) v[nv].iov_len = want - done - sum;
      sum += v[nv].iov_len;
      nv++;
    }
    ssize_t n = pwritev(j->fd, v, (int)nv, (off_t)(j->off + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      err = n < 0 ? map_err(errno) : UV_ENOSPC;
      break;
    }
    done += (size_t)n;
    size_t adv = (size_t)n;
    while (adv) {
      size_t left = j->iov[i].iov_len - skip;
      if (adv < left) {
        skip += adv;
        adv = 0;
      } else {
        adv -= left;
        skip = 0;
        i++;
      }
    }
  }
  if (!err && j->fail_err) err = j->fail_err;
  if (!err && j->sync && fdatasync(j->fd) != 0) err = map_err(errno);
  if (err) {
    j->status = err;
    while (ftruncate(j->fd, (off_t)j->off) != 0)
      if (errno != EINTR) {
        j->broken = 1;
        break;
      }
  }
}

static void job_after(uv_work_t *w, int wstatus);

/* Closes the batch: everything pending that fits the segment (one DATA record with fsync always), in one job. */
static void sp_flush(sp_t *sp) {
  if (sp->busy || !sp->pend) return;
  sp_job_t *j = &sp->job;
  memset(j, 0, offsetof(sp_job_t, new_path));
  j->w.data = NULL;
  j->sp = sp;
  j->fd = sp->fd;
  j->old_fd = sp->fd;
  j->rotate = sp->broken || sp->fd < 0 || (sp->active->size > 0 && sp->active->size + sp->pend->len > sp->seg_bytes);
  uint64_t base = j->rotate ? 0 : sp->active->size;
  j->may_rotate = !j->rotate && base > 0 && !sp->fail_next;
  if (j->rotate || j->may_rotate) {
    if (!(j->seg = calloc(1, sizeof *j->seg))) { /* out of memory: tried again next turn */
      if (j->rotate) return;
      j->may_rotate = 0;
    }
    seg_path(j->new_path, sizeof j->new_path, sp->root, sp->worker, sp->next_seq);
    snprintf(j->dir_path, sizeof j->dir_path, "%s", sp->wdir);
  }
  size_t n = 0, total = 0;
  int has_data = 0;
  sp_ent_t **tail = &sp->flight;
  while (sp->pend) {
    sp_ent_t *e = sp->pend;
    if (n > 0 && (base + total + e->len > sp->seg_bytes || n >= SP_IOV_MAX * 16)) break;
    if (e->data && has_data && sp->fsync == SP_FSYNC_ALWAYS) break;
    if (n == sp->iov_cap) {
      size_t cap = sp->iov_cap ? sp->iov_cap * 2 : 64;
      struct iovec *v = realloc(sp->iov, cap * sizeof *v);
      if (!v) break;
      sp->iov = v;
      sp->iov_cap = cap;
    }
    sp->pend = e->next;
    e->next = NULL;
    *tail = e;
    tail = &e->next;
    e->offset = base + total;
    sp->iov[n].iov_base = e->buf;
    sp->iov[n].iov_len = e->len;
    n++;
    total += e->len;
    has_data |= e->data;
  }
  if (!sp->pend) sp->pend_tail = &sp->pend;
  if (n == 0) return; /* out of memory: tried again next turn */
  j->off = base;
  j->iov = sp->iov;
  j->n_iov = n;
  j->total = total;
  j->sync = sp->fsync != SP_FSYNC_NEVER && has_data;
  if (j->rotate && sp->fsync != SP_FSYNC_NEVER) j->sync = 1;
  j->fail_err = sp->fail_next;
  sp->fail_next = 0;
  sp->busy = 1;
  sp->writes++;
  if (uv_queue_work(sp->loop, &j->w, job_work, job_after) != 0) {
    job_work(&j->w); /* cannot happen with a valid loop; keep the contract anyway */
    job_after(&j->w, 0);
  }
}

static void job_after(uv_work_t *w, int wstatus) {
  sp_job_t *j = (sp_job_t *)w;
  sp_t *sp = j->sp;
  sp->busy = 0;
  if (j->broken) sp->broken = 1;
  if (j->new_fd >= 0) { /* rotated: the old segment is no longer active */
    sp_seg_t *s = j->seg, *old = sp->active;
    j->seg = NULL;
    sp->fd = j->new_fd;
    sp->broken = j->broken;
    s->seq = sp->next_seq++;
    s->dir = sp->worker;
    s->active = 1;
    sp_seg_t **pp = &sp->segs;
    while (*pp) pp = &(*pp)->next;
    *pp = s;
    sp->active = s;
    sp->st.segments++;
    old->active = 0;
    seg_maybe_drop(sp, old);
  }
  free(j->seg); /* a rotation that failed, or was not needed */
  j->seg = NULL;
  int status = j->status;
  if (j->moved_from) /* written to the new segment instead: the records' offsets start at 0 there */
    for (sp_ent_t *e = sp->flight; e; e = e->next) e->offset -= j->moved_from;
  if (status == 0) {
    sp->active->size = j->off + j->total;
    sp->st.failing = 0;
  } else {
    sp->st.failing = 1;
    /* Out of space: the next batch starts a new segment, so a per-file limit (RLIMIT_FSIZE) or a segment that
     * cannot grow does not block the spool once space is back; the full one goes when its records are retired. */
    if (status == UV_ENOSPC && sp->active->size > 0) sp->broken = 1;
  }
  sp_ent_t *list = sp->flight, *requeue = NULL, **rq_tail = &requeue;
  sp->flight = NULL;
  sp->in_cb = 1;
  while (list) {
    sp_ent_t *e = list;
    list = e->next;
    if (!e->data) {
      if (status != 0 && !sp->closing) { /* a tombstone is not lost for a failed write: it rides with the next */
        e->next = NULL;
        *rq_tail = e;
        rq_tail = &e->next;
      } else {
        free(e);
      }
      continue;
    }
    sp->reserved -= e->len;
    sp_rec_t *rec = NULL;
    int st = status;
    if (st == 0) {
      rec = malloc(sizeof *rec);
      if (rec) {
        rec->sp = sp;
        rec->seg = sp->active;
        rec->offset = (uint32_t)e->offset;
        rec->size = (uint32_t)e->len;
        rec->refs = 1;
        sp->n_recs++;
        sp->active->live_count++;
        sp->active->live_bytes += e->len;
        sp->st.live_records++;
        sp->st.live_bytes += e->len;
      } else {
        st = UV_ENOMEM; /* stays on disk unreferenced: replayed next start (at-least-once) */
      }
    }
    if (st != 0) sp->st.write_errors++;
    e->durable(e->ud, st, rec);
    free(e);
  }
  sp->in_cb = 0;
  if (requeue) { /* ahead of what was appended meanwhile; not armed by itself: no retry loop on a full disk */
    *rq_tail = sp->pend;
    if (!sp->pend) sp->pend_tail = rq_tail;
    sp->pend = requeue;
  }
  if (sp->closing) {
    sp_step_close(sp);
    return;
  }
  int data_pending = 0;
  for (sp_ent_t *e = sp->pend; e && !data_pending; e = e->next) data_pending = e->data;
  if (sp->pend && (status == 0 || data_pending)) sp_flush(sp);
  (void)wstatus;
}

/* ---- open, append, references --------------------------------------------------------------------------- */

static int mkdir_p(const char *path) {
  char buf[PATH_MAX];
  size_t n = strlen(path);
  if (n == 0 || n >= sizeof buf) return -ENAMETOOLONG;
  memcpy(buf, path, n + 1);
  for (size_t i = 1; i <= n; i++) {
    if (buf[i] != '/' && buf[i] != '\0') continue;
    char c = buf[i];
    buf[i] = '\0';
    if (mkdir(buf, 0755) != 0 && errno != EEXIST) return -errno;
    buf[i] = c;
  }
  struct stat st;
  if (stat(path, &st) != 0) return -errno;
  return S_ISDIR(st.st_mode) ? 0 : -ENOTDIR;
}

int sp_lock_dir(const char *directory, char *err, size_t errlen) {
  int r = mkdir_p(directory);
  if (r < 0) {
    snprintf(err, errlen, "backends.queue.directory %s: %s", directory, strerror(-r));
    return -1;
  }
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/.write-test-%ld", directory, (long)getpid());
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0 || write(fd, "x", 1) != 1) {
    int e = errno;
    if (fd >= 0) {
      close(fd);
      unlink(path);
    }
    snprintf(err, errlen, "backends.queue.directory %s: %s", directory, strerror(e ? e : EIO));
    return -1;
  }
  close(fd);
  unlink(path);
  snprintf(path, sizeof path, "%s/lock", directory);
  fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) {
    snprintf(err, errlen, "backends.queue.directory %s: %s: %s", directory, path, strerror(errno));
    return -1;
  }
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int e = errno;
    char pid[32] = "";
    ssize_t n = pread(fd, pid, sizeof pid - 1, 0);
    if (n > 0) pid[n] = '\0';
    pid[strcspn(pid, "\r\n")] = '\0';
    close(fd);
    if (e == EWOULDBLOCK)
      snprintf(err, errlen, "backends.queue.directory %s: held by another running gateway (pid %s)", directory,
               pid[0] ? pid : "unknown");
    else
      snprintf(err, errlen, "backends.queue.directory %s: lock %s: %s", directory, path, strerror(e));
    return -1;
  }
  char pid[32];
  int len = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
  if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)len, 0) != len) {
    snprintf(err, errlen, "backends.queue.directory %s: %s: %s", directory, path, strerror(errno));
    close(fd);
    return -1;
  }
  return fd;
}

static int seg_cmp(const void *a, const void *b) {
  const sp_seg_t *x = *(sp_seg_t *const *)a, *y = *(sp_seg_t *const *)b;
  if (x->dir != y->dir) return x->dir < y->dir ? -1 : 1;
  return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Adds the segments of <root>/w<dir> to *arr. 0 or -errno (a missing directory is empty). */
static int list_segments(const char *root, unsigned dir, int foreign, sp_seg_t ***arr, size_t *n, size_t *cap) {
  char path[PATH_MAX];
  snprintf(path, sizeof path, "%s/w%u", root, dir);
  DIR *d = opendir(path);
  if (!d) return errno == ENOENT ? 0 : -errno;
  struct dirent *de;
  size_t first = *n;
  while ((de = readdir(d))) {
    const char *nm = de->d_name;
    if (strlen(nm) != 24 || strncmp(nm, "seg-", 4) != 0 || strcmp(nm + 20, ".log") != 0) continue;
    uint64_t seq = 0;
    int ok = 1;
    for (int i = 4; i < 20; i++) {
      char c = nm[i];
      int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
      if (v < 0) ok = 0;
      seq = seq << 4 | (uint64_t)(v < 0 ? 0 : v);
    }
    if (!ok || seq > SP_SEQ_MASK) continue;
    if (*n == *cap) {
      size_t c2 = *cap ? *cap * 2 : 16;
      sp_seg_t **a2 = realloc(*arr, c2 * sizeof *a2);
      if (!a2) {
        closedir(d);
        return -ENOMEM;
      }
      *arr = a2;
      *cap = c2;
    }
    sp_seg_t *s = calloc(1, sizeof *s);
    if (!s) {
      closedir(d);
      return -ENOMEM;
    }
    s->seq = seq;
    s->dir = dir;
    s->pinned = 1;
    (*arr)[(*n)++] = s;
  }
  closedir(d);
  if (foreign && *n > first) { /* mark the highest */
    size_t hi = first;
    for (size_t i = first; i < *n; i++)
      if ((*arr)[i]->seq > (*arr)[hi]->seq) hi = i;
    (*arr)[hi]->keep_name = 1;
  }
  return 0;
}

int sp_open(uv_loop_t *loop, const sp_config_t *cfg, sp_t **out, char *err, size_t errlen) {
  signal(SIGXFSZ, SIG_IGN); /* RLIMIT_FSIZE: a write past it fails with EFBIG instead of killing the process */
  *out = NULL;
  sp_t *sp = calloc(1, sizeof *sp);
  sp_seg_t **arr = NULL;
  size_t n = 0, cap = 0;
  if (!sp) goto oom;
  sp->loop = loop;
  sp->worker = cfg->worker;
  sp->fsync = cfg->fsync;
  sp->seg_bytes = cfg->segment_bytes ? cfg->segment_bytes : SP_DEFAULT_SEGMENT;
  if (sp->seg_bytes > SP_MAX_SEGMENT) sp->seg_bytes = SP_MAX_SEGMENT;
  sp->max_bytes = cfg->max_bytes;
  sp->fd = -1;
  sp->pend_tail = &sp->pend;
  sp->root = strdup(cfg->directory);
  size_t wl = strlen(cfg->directory) + 16;
  sp->wdir = malloc(wl);
  if (!sp->root || !sp->wdir) goto oom;
  snprintf(sp->wdir, wl, "%s/w%u", cfg->directory, cfg->worker);
  int r = mkdir_p(sp->wdir);
  if (r < 0) {
    snprintf(err, errlen, "backends.queue.directory %s: %s", sp->wdir, strerror(-r));
    goto fail;
  }
  r = list_segments(sp->root, sp->worker, 0, &arr, &n, &cap);
  if (r == 0 && sp->worker == 0) {
    DIR *d = opendir(sp->root);
    struct dirent *de;
    while (r == 0 && d && (de = readdir(d))) {
      char *end;
      if (de->d_name[0] != 'w' || de->d_name[1] < '0' || de->d_name[1] > '9') continue;
      unsigned long w = strtoul(de->d_name + 1, &end, 10);
      if (*end || w < cfg->n_workers || w == 0 || w > 0xffff) continue;
      r = list_segments(sp->root, (unsigned)w, 1, &arr, &n, &cap);
    }
    if (d) closedir(d);
  }
  if (r < 0) {
    snprintf(err, errlen, "backends.queue.directory %s: %s", sp->root, strerror(-r));
    goto fail;
  }
  /* own segments first (dir = worker sorts first only for worker 0: sort own apart) */
  if (n) qsort(arr, n, sizeof *arr, seg_cmp);
  sp_seg_t **tail = &sp->segs;
  for (int own = 1; own >= 0; own--)
    for (size_t i = 0; i < n; i++)
      if ((arr[i]->dir == sp->worker) == own) {
        *tail = arr[i];
        tail = &arr[i]->next;
        if (own && arr[i]->seq >= sp->next_seq) sp->next_seq = arr[i]->seq + 1;
      }
  *tail = NULL;
  sp->st.segments = n;
  free(arr);
  arr = NULL;
  if (sp->next_seq == 0) sp->next_seq = 1;
  /* the active segment now, so the highest sequence number is always on disk */
  sp_seg_t *s = calloc(1, sizeof *s);
  if (!s) goto oom;
  char path[PATH_MAX];
  seg_path(path, sizeof path, sp->root, sp->worker, sp->next_seq);
  sp->fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (sp->fd < 0) {
    snprintf(err, errlen, "backends.queue.directory %s: %s", path, strerror(errno));
    free(s);
    goto fail;
  }
  s->seq = sp->next_seq++;
  s->dir = sp->worker;
  s->active = 1;
  *tail = s;
  sp->active = s;
  sp->st.segments++;
  uv_prepare_init(loop, &sp->prep);
  sp->prep.data = sp;
  *out = sp;
  return 0;
oom:
  snprintf(err, errlen, "backends.queue.directory %s: out of memory", cfg->directory);
fail:
  if (arr)
    for (size_t i = 0; i < n; i++) free(arr[i]);
  free(arr);
  if (sp) {
    sp->closed = 1;
    maybe_free(sp);
  }
  return -1;
}

int sp_append(sp_t *sp, int signal_, const struct iovec *iov, size_t n_iov, uint64_t items,
              void (*durable)(void *ud, int status, sp_rec_t *rec), void *ud) {
  if (sp->closing) return UV_ECANCELED;
  size_t plen = SP_DATA_HDR;
  for (size_t i = 0; i < n_iov; i++) plen += iov[i].iov_len;
  if (plen > sp->seg_bytes || plen > UINT32_MAX - SP_HDR) return UV_E2BIG;
  size_t len = SP_HDR + plen;
  if (sp->max_bytes && sp->st.live_bytes + sp->reserved + len > sp->max_bytes) return UV_ENOSPC;
  sp_ent_t *e = malloc(sizeof *e + len);
  if (!e) return UV_ENOMEM;
  e->data = 1;
  e->durable = durable;
  e->ud = ud;
  e->len = len;
  uint8_t *p = e->buf;
  put32(p, SP_MAGIC);
  put32(p + 4, (uint32_t)plen);
  p[12] = SP_TYPE_DATA;
  p[13] = (uint8_t)signal_;
  put64(p + 14, items);
  size_t off = SP_HDR + SP_DATA_HDR;
  for (size_t i = 0; i < n_iov; i++) {
    if (iov[i].iov_len) memcpy(p + off, iov[i].iov_base, iov[i].iov_len);
    off += iov[i].iov_len;
  }
  put32(p + 8, sp_crc32c(0, p + 12, 1 + plen));
  sp->reserved += len;
  enqueue(sp, e);
  return 0;
}

void sp_rec_ref(sp_rec_t *rec) { rec->refs++; }

static void rec_release(sp_rec_t *rec) {
  sp_t *sp = rec->sp;
  free(rec);
  sp->n_recs--;
  maybe_free(sp);
}

void sp_rec_unref(sp_rec_t *rec) {
  if (--rec->refs > 0) return;
  sp_t *sp = rec->sp;
  if (sp->closing) { /* shutting down: nothing is retired any more, the record stays live on disk */
    rec_release(rec);
    return;
  }
  sp_seg_t *s = rec->seg;
  s->live_count--;
  s->live_bytes -= rec->size;
  sp->st.live_records--;
  sp->st.live_bytes -= rec->size;
  if (s->live_count == 0 && !s->active && !s->pinned) {
    seg_drop(sp, s, 0); /* the whole segment goes: no tombstone needed */
  } else {
    sp_ent_t *e = malloc(sizeof *e + SP_HDR + SP_RETIRE_LEN);
    if (e) { /* a lost tombstone is an extra delivery next start, never a loss */
      e->data = 0;
      e->durable = NULL;
      e->ud = NULL;
      e->len = SP_HDR + SP_RETIRE_LEN;
      uint8_t *p = e->buf;
      put32(p, SP_MAGIC);
      put32(p + 4, SP_RETIRE_LEN);
      p[12] = SP_TYPE_RETIRE;
      put64(p + 13, (uint64_t)s->dir << 48 | s->seq);
      put32(p + 21, rec->offset);
      put32(p + 8, sp_crc32c(0, p + 12, 1 + SP_RETIRE_LEN));
      enqueue(sp, e);
    }
  }
  rec_release(rec);
}

void sp_rec_abandon(sp_rec_t *rec) {
  if (--rec->refs > 0) return;
  rec_release(rec); /* the segment keeps counting it live: never deleted this run */
}

const sp_stats_t *sp_stats(const sp_t *sp) { return &sp->st; }

/* ---- replay ------------------------------------------------------------------------------------------- */

typedef struct {
  uint64_t *keys; /* seg id, offset << 1 | 1 packed as two words per slot */
  size_t cap, n;
} tomb_set_t;

static uint64_t tomb_hash(uint64_t seg, uint32_t off) {
  uint64_t h = seg * 0x9e3779b97f4a7c15ull ^ (off + 0x632be59bd9b4e019ull) * 0xbf58476d1ce4e5b9ull;
  return h ^ (h >> 31);
}

static int tomb_has(const tomb_set_t *t, uint64_t seg, uint32_t off) {
  if (!t->cap) return 0;
  for (size_t i = tomb_hash(seg, off) & (t->cap - 1);; i = (i + 1) & (t->cap - 1)) {
    uint64_t *k = t->keys + 2 * i;
    if (!k[1]) return 0;
    if (k[0] == seg && k[1] == ((uint64_t)off << 1 | 1)) return 1;
  }
}

static void tomb_put(tomb_set_t *t, uint64_t seg, uint32_t off) {
  if ((t->n + 1) * 2 > t->cap) {
    size_t cap = t->cap ? t->cap * 2 : 1024;
    uint64_t *k = calloc(cap * 2, sizeof *k);
    if (!k) return; /* a tombstone missed: an extra delivery */
    tomb_set_t nt = {k, cap, 0};
    for (size_t i = 0; i < t->cap; i++)
      if (t->keys[2 * i + 1]) tomb_put(&nt, t->keys[2 * i], (uint32_t)(t->keys[2 * i + 1] >> 1));
    free(t->keys);
    *t = nt;
  }
  for (size_t i = tomb_hash(seg, off) & (t->cap - 1);; i = (i + 1) & (t->cap - 1)) {
    uint64_t *k = t->keys + 2 * i;
    if (!k[1]) {
      k[0] = seg;
      k[1] = (uint64_t)off << 1 | 1;
      t->n++;
      return;
    }
    if (k[0] == seg && k[1] == ((uint64_t)off << 1 | 1)) return;
  }
}

static uint8_t *read_file(const char *path, size_t *len) {
  *len = 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return NULL;
  struct stat st;
  uint8_t *buf = NULL;
  if (fstat(fd, &st) == 0 && st.st_size > 0 && (uint64_t)st.st_size <= SIZE_MAX - 1) {
    buf = malloc((size_t)st.st_size);
    size_t got = 0;
    while (buf && got < (size_t)st.st_size) {
      ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      got += (size_t)n;
    }
    *len = got;
  }
  close(fd);
  return buf;
}

typedef struct {
  sp_t *sp;
  sp_seg_t *seg;
  tomb_set_t *tombs;
  void (*fn)(void *ud, int signal, const uint8_t *bytes, size_t len, uint64_t items, sp_rec_t *rec);
  void *ud;
  size_t handed, bad;
} replay_ctx_t;

static void collect_tombs(void *ud, int type, const uint8_t *payload, size_t plen, uint32_t offset) {
  replay_ctx_t *c = ud;
  if (type == SP_TYPE_RETIRE && plen == SP_RETIRE_LEN) tomb_put(c->tombs, get64(payload), get32(payload + 8));
}

static void hand_out(void *ud, int type, const uint8_t *payload, size_t plen, uint32_t offset) {
  replay_ctx_t *c = ud;
  if (type != SP_TYPE_DATA) return;
  if (plen < SP_DATA_HDR) {
    c->bad++;
    return;
  }
  sp_seg_t *s = c->seg;
  if (tomb_has(c->tombs, (uint64_t)s->dir << 48 | s->seq, offset)) return;
  sp_t *sp = c->sp;
  uint32_t size = (uint32_t)(SP_HDR + plen);
  s->live_count++;
  s->live_bytes += size;
  sp->st.live_records++;
  sp->st.live_bytes += size;
  uint64_t items = get64(payload + 1);
  sp->st.replayed_records++;
  sp->st.replayed_items += items;
  sp_rec_t *rec = malloc(sizeof *rec);
  if (!rec) return; /* counted live: stays on disk for the next start */
  rec->sp = sp;
  rec->seg = s;
  rec->offset = offset;
  rec->size = size;
  rec->refs = 1;
  sp->n_recs++;
  c->handed++;
  c->fn(c->ud, payload[0], payload + SP_DATA_HDR, plen - SP_DATA_HDR, items, rec);
}

size_t sp_replay(sp_t *sp, void (*fn)(void *ud, int signal, const uint8_t *bytes, size_t len, uint64_t items,
                                      sp_rec_t *rec),
                 void *ud) {
  if (sp->replayed) return 0;
  sp->replayed = 1;
  tomb_set_t tombs = {0};
  replay_ctx_t c = {sp, NULL, &tombs, fn, ud, 0, 0};
  char path[PATH_MAX];
  for (sp_seg_t *s = sp->segs; s; s = s->next) { /* tombstones first: a record's may be in a later segment */
    if (s->active) continue;
    seg_path(path, sizeof path, sp->root, s->dir, s->seq);
    size_t len;
    uint8_t *buf = read_file(path, &len);
    if (buf) sp_scan_segment(buf, len, collect_tombs, &c);
    free(buf);
  }
  sp_seg_t *next;
  for (sp_seg_t *s = sp->segs; s; s = next) {
    if (s->active) {
      next = s->next;
      continue;
    }
    seg_path(path, sizeof path, sp->root, s->dir, s->seq);
    size_t len;
    uint8_t *buf = read_file(path, &len);
    c.seg = s;
    c.bad = 0;
    if (buf) sp->st.corrupt_records += sp_scan_segment(buf, len, hand_out, &c);
    sp->st.corrupt_records += c.bad;
    s->size = len;
    free(buf);
    next = s->next;
    s->pinned = 0;
    if (s->live_count == 0 && !sp->closing) seg_drop(sp, s, 1); /* everything in it retired */
  }
  free(tombs.keys);
  return c.handed;
}

/* ---- close ------------------------------------------------------------------------------------------ */

static void on_prep_closed(uv_handle_t *h) {
  sp_t *sp = h->data;
  sp->prep_closed = 1;
  sp_step_close(sp);
}

static void on_fd_closed(uv_fs_t *req) {
  sp_t *sp = req->data;
  uv_fs_req_cleanup(req);
  free(req);
  sp->fd = -1;
  sp->n_reqs--;
  sp_step_close(sp);
}

static void sp_step_close(sp_t *sp) {
  if (sp->in_cb || sp->busy || sp->closed) return;
  if (sp->pend) {
    sp_flush(sp);
    return;
  }
  if (sp->n_reqs) return;
  if (sp->fd >= 0 && !sp->fd_closing) {
    sp->fd_closing = 1;
    uv_fs_t *req = malloc(sizeof *req);
    if (req) {
      req->data = sp;
      sp->n_reqs++;
      if (uv_fs_close(sp->loop, req, sp->fd, on_fd_closed) == 0) return;
      sp->n_reqs--;
      free(req);
    }
    close(sp->fd);
    sp->fd = -1;
  }
  if (sp->fd >= 0) return;
  if (!sp->prep_closed) {
    if (!uv_is_closing((uv_handle_t *)&sp->prep)) uv_close((uv_handle_t *)&sp->prep, on_prep_closed);
    return;
  }
  sp->closed = 1;
  void (*done)(void *) = sp->done;
  void *done_ud = sp->done_ud;
  maybe_free(sp);
  if (done) done(done_ud);
}

void sp_close(sp_t *sp, void (*done)(void *ud), void *ud) {
  if (sp->closing) return;
  sp->closing = 1;
  sp->done = done;
  sp->done_ud = ud;
  if (sp->prep_on) {
    uv_prepare_stop(&sp->prep);
    sp->prep_on = 0;
  }
  sp_step_close(sp);
}

/* ---- test hooks ----------------------------------------------------------------------------------------- */

void sp__test_fail_next_write(sp_t *sp, int err) { sp->fail_next = err; }
uint64_t sp__test_writes(const sp_t *sp) { return sp->writes; }
