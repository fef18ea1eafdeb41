/*
 * gateway/spool — the crash-safe on-disk log of acknowledged, undelivered parts (backends.queue.directory), one per
 * worker loop, owned by that loop. A part that goes to a retry queue is appended here first, and the client's
 * acknowledgement waits until the record is durable (queue.fsync); delivery, a drop counted by retry.max_elapsed or
 * a rejection retires it. After a crash the next start replays every live record onto the current ring. Parts
 * delivered on the first try never touch the disk.
 *
 * Layout: <directory>/lock (flock: one gateway per directory, taken by sp_lock_dir on the main thread), and per
 * worker <directory>/w<N>/ with append-only segment files seg-<16 hex digits>.log of at most segment_bytes each.
 * A record: magic u32 "OTLS" | length u32 (payload bytes) | CRC32C u32 of type..payload | type u8 (DATA = 1,
 * RETIRE = 2) | payload. DATA payload: signal u8 | items u64 (LE) | the part's protobuf bytes. RETIRE payload:
 * segment u64 (the worker directory's index N of w<N> << 48 | the segment's sequence number) | offset u32 of the DATA
 * record it retires (tombstones need no fsync: a lost one only means an
 * extra delivery, at-least-once). A segment is deleted once every DATA record in it is retired and it is not the
 * one being written. A batch that finds no room where the segment being written ends (a per-file limit, a file
 * that cannot grow) is written to a new segment at once; only one that a new segment cannot take either fails.
 * Integers are little-endian.
 *
 * Writes and fdatasync run on libuv's thread pool (uv_fs_*), never on the loop; with fsync batch, everything
 * appended during one loop turn goes out as one write + one fdatasync, and its durable callbacks run after it.
 *
 * Replay (sp_replay, at start, before the first append): every segment of this worker's directory is read; DATA
 * records not retired by a RETIRE record are handed out; a torn tail record or a CRC mismatch is skipped and
 * counted (the reader resynchronises on the next magic). Records of worker directories w<N> with N >= the current
 * worker count are replayed by worker 0 (the worker count changed since).
 */
#ifndef OTLPGW_SPOOL_H
#define OTLPGW_SPOOL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>
#include <uv.h>

typedef struct sp sp_t;
typedef struct sp_rec sp_rec_t;

typedef enum { SP_FSYNC_BATCH = 0, SP_FSYNC_ALWAYS, SP_FSYNC_NEVER } sp_fsync_t;

typedef struct sp_config {
  const char *directory;   /* backends.queue.directory */
  unsigned worker;         /* this loop's index: its directory is <directory>/w<worker> */
  unsigned n_workers;      /* worker 0 also replays w<N> for N >= n_workers */
  sp_fsync_t fsync;
  uint64_t segment_bytes;  /* 0 = 64 MiB */
  uint64_t max_bytes;      /* live bytes on disk for this worker; appends past it fail with UV_ENOSPC; 0 = none */
} sp_config_t;

typedef struct sp_stats {
  uint64_t live_bytes;      /* DATA bytes not yet retired */
  uint64_t live_records;
  uint64_t segments;        /* files on disk */
  uint64_t replayed_records;
  uint64_t replayed_items;
  uint64_t corrupt_records; /* skipped at replay (torn tail, CRC mismatch, bad length) */
  uint64_t write_errors;    /* appends that failed (disk full, I/O error) */
  int failing;              /* the last write failed: new appends fail until one succeeds (tried again per turn) */
} sp_stats_t;

/* Main thread, before the workers start: creates the directory if needed, checks it is writable, takes
 * <directory>/lock (flock LOCK_EX|LOCK_NB; the fd stays open for the process's life). Returns the lock fd, or -1
 * with a one-line reason naming the path ("backends.queue.directory /x: held by another running gateway (pid
 * 123)", "... : Permission denied"). --check-config calls it and closes the fd. */
int sp_lock_dir(const char *directory, char *err, size_t errlen);

/* Opens this worker's spool on loop (creating <directory>/w<worker>). 0, or -1 with a reason. */
int sp_open(uv_loop_t *loop, const sp_config_t *cfg, sp_t **out, char *err, size_t errlen);

/* Hands out every live record of the previous run (see above), synchronously, in order: fn(ud, signal, bytes, len,
 * items, rec). bytes are valid during the call only (copy them); rec is referenced once for the callee, who
 * releases it (sp_rec_unref, which retires it) when the part is delivered or dropped, or keeps it with
 * sp_rec_abandon at a shutdown deadline. Call once, before the first sp_append. Returns the records handed out. */
size_t sp_replay(sp_t *sp, void (*fn)(void *ud, int signal, const uint8_t *bytes, size_t len, uint64_t items,
                                      sp_rec_t *rec),
                 void *ud);

/* Appends a part (the iovecs gathered: copied before this returns). durable(ud, status, rec) runs once, from the
 * loop, never inside sp_append: status 0 when the record is durable as queue.fsync says (rec referenced once
 * for the callee), or a negative libuv error (UV_ENOSPC, UV_EIO, ...; rec NULL): the part was not stored and must
 * not be acknowledged. Returns 0, or a negative error at once (nothing stored, durable not called). */
int sp_append(sp_t *sp, int signal, const struct iovec *iov, size_t n_iov, uint64_t items,
              void (*durable)(void *ud, int status, sp_rec_t *rec), void *ud);

/* References: a part re-split onto new owners shares its record; the last sp_rec_unref retires it (a RETIRE
 * record is appended, the segment deleted once all its records are retired). sp_rec_abandon drops a reference
 * without ever retiring the record: it stays live on disk for the next start (shutdown deadline). */
void sp_rec_ref(sp_rec_t *rec);
void sp_rec_unref(sp_rec_t *rec);
void sp_rec_abandon(sp_rec_t *rec);

const sp_stats_t *sp_stats(const sp_t *sp);

/* Flushes what is pending (tombstones), waits for in-flight writes, closes the files; done(ud) when finished (run
 * the loop). Records still referenced stay live on disk. */
void sp_close(sp_t *sp, void (*done)(void *ud), void *ud);

/* For the fuzzer and tests: scans one segment's bytes as replay does; fn gets each valid record (type, payload,
 * payload length, offset); returns the number of corrupt records skipped. Never reads past len. */
size_t sp_scan_segment(const uint8_t *buf, size_t len,
                       void (*fn)(void *ud, int type, const uint8_t *payload, size_t plen, uint32_t offset), void *ud);

/* CRC32C (Castagnoli), as the records use. */
uint32_t sp_crc32c(uint32_t crc, const void *data, size_t len);

/* Test hooks (tests/unit/test_spool.c only). sp__test_fail_next_write: the next batch writes half its bytes, then
 * fails with err (a negative libuv error), as a disk filling up would. sp__test_writes: batches written so far (one
 * write, and one fdatasync unless fsync never, each). sp__test_crc32c_sw: the table path of sp_crc32c. */
void sp__test_fail_next_write(sp_t *sp, int err);
uint64_t sp__test_writes(const sp_t *sp);
uint32_t sp__test_crc32c_sw(uint32_t crc, const void *data, size_t len);

#endif
