/*
 * gateway/batcher — see batcher.h. Owns the parts waiting for a backend (per signal, FIFO by submission), the
 * backend requests built from them (bt_req_t: the parts' iovecs side by side, one optional gzip copy), and the
 * per-part outcomes of a request, including the re-sends that make a rejected or partly rejected batch tell
 * each part its own count. Flushing happens in one place, the group's check handle at the end of a loop turn;
 * an idle handle runs alongside while a batcher waits, so a part submitted outside the I/O phase (a timer's
 * callback) does not wait for the next I/O event: the loop polls without blocking until the check has run.
 */
#include "gateway/batcher.h"

#include <stdlib.h>
#include <string.h>

#include "gateway/memory.h"
#include "gateway/otlp_http.h"

struct bt_group {
  uv_loop_t *loop;
  uv_check_t check;
  uv_idle_t idle;   /* active while dirty is not empty: keeps the poll phase from blocking before the check */
  bt_t *dirty;      /* batchers with waiting parts to look at in the next check */
  bt_t *flushing;   /* the ones the running check has still to flush */
  int handles_open;
};

typedef struct bt_queue {
  bt_part_t *head, *tail;
} bt_queue_t;

struct bt {
  bt_group_t *g;
  bt_t *dirty_next;
  int dirty;
  bt_config_t cfg;
  bt_send_fn send;
  void *send_ud;
  bt_request_cb on_request;
  void *ud;
  bt_queue_t q[OTLP_N_SIGNALS];
  size_t n_waiting;
  uint64_t waiting_bytes;
  uint64_t waiting_unqueued; /* of waiting_bytes, parts not marked queued */
  uint32_t in_flight;
  uint64_t last_send_ns; /* the newest request in flight started then */
  uint64_t seq;
  uint64_t seal;
  int cancelling;
};

/* One backend request: its parts (chained through next, in order) and the iovecs sent. */
typedef struct bt_req {
  bt_t *b;
  int sig;
  bt_part_t *parts;
  size_t n_parts;
  uint64_t items;
  size_t bytes;         /* sent, after compression */
  uint64_t start_ns;
  uint8_t *gz;          /* compress: the batch gzipped (charged to the process budget until freed) */
  size_t gz_len;
  struct iovec iov[];
} bt_req_t;

/* ---- group -------------------------------------------------------------------------------------------- */

static void flush(bt_t *b);

static void on_check(uv_check_t *h) {
  bt_group_t *g = h->data;
  /* The batchers dirtied while these flush (a part's callback re-routing elsewhere) wait for the next turn's
   * check; the idle handle keeps that turn from blocking. */
  g->flushing = g->dirty;
  g->dirty = NULL;
  while (g->flushing) {
    bt_t *b = g->flushing;
    g->flushing = b->dirty_next;
    b->dirty_next = NULL;
    b->dirty = 0;
    flush(b);
  }
  if (!g->dirty) {
    uv_check_stop(&g->check);
    uv_idle_stop(&g->idle);
  }
}

static void on_idle(uv_idle_t *h) { (void)h; }

static void mark_dirty(bt_t *b) {
  if (b->dirty) return;
  bt_group_t *g = b->g;
  b->dirty = 1;
  b->dirty_next = g->dirty;
  g->dirty = b;
  uv_check_start(&g->check, on_check);
  uv_idle_start(&g->idle, on_idle);
}

int bt_group_create(uv_loop_t *loop, bt_group_t **out) {
  bt_group_t *g = calloc(1, sizeof *g);
  if (!g) return UV_ENOMEM;
  g->loop = loop;
  uv_check_init(loop, &g->check);
  uv_idle_init(loop, &g->idle);
  g->check.data = g;
  g->idle.data = g;
  g->handles_open = 2;
  *out = g;
  return 0;
}

static void on_group_closed(uv_handle_t *h) {
  bt_group_t *g = h->data;
  if (--g->handles_open == 0) free(g);
}

void bt_group_destroy(bt_group_t *g) {
  if (!g) return;
  uv_close((uv_handle_t *)&g->check, on_group_closed);
  uv_close((uv_handle_t *)&g->idle, on_group_closed);
}

/* ---- queues ------------------------------------------------------------------------------------------- */

static void q_push_back(bt_queue_t *q, bt_part_t *p) {
  p->next = NULL;
  if (q->tail) q->tail->next = p;
  else q->head = p;
  q->tail = p;
}

/* Puts the chain first..last (linked through next) back at the front of q, in its order. */
static void q_push_front_chain(bt_queue_t *q, bt_part_t *first, bt_part_t *last) {
  last->next = q->head;
  if (!q->head) q->tail = last;
  q->head = first;
}

static bt_part_t *q_pop(bt_queue_t *q) {
  bt_part_t *p = q->head;
  if (!p) return NULL;
  if (!(q->head = p->next)) q->tail = NULL;
  p->next = NULL;
  return p;
}

/* ---- sending ------------------------------------------------------------------------------------------ */

static void on_sent(void *ud, int status, const uint8_t *body, size_t len, uint32_t retry_after);

static void req_free(bt_req_t *r) {
  if (r->gz) {
    gm_release(&gm_process, r->gz_len);
    free(r->gz);
  }
  free(r);
}

/* Every part of the chain gets o (the chain is unlinked first: a callback may submit its part again). */
static void finish_chain(bt_part_t *p, const bt_outcome_t *o) {
  while (p) {
    bt_part_t *next = p->next;
    p->next = NULL;
    p->done(p, o);
    p = next;
  }
}

/* The next batch of b's: the queue whose head waits longest; a sealed head leaves with its seal's parts only,
 * an unsealed one with the unsealed parts behind it up to the limits. */
static void send_one(bt_t *b) {
  int sig = -1;
  for (int s = 0; s < OTLP_N_SIGNALS; s++)
    if (b->q[s].head && (sig < 0 || b->q[s].head->seq < b->q[sig].head->seq)) sig = s;
  bt_queue_t *q = &b->q[sig];
  bt_part_t *first = q_pop(q), *last = first;
  size_t n = 1, bytes = first->len, n_iov = first->n_iov;
  uint64_t items = first->items;
  uint32_t max_parts = b->cfg.max_parts ? b->cfg.max_parts : 1;
  for (bt_part_t *p = q->head; p; p = q->head) {
    if (first->seal ? p->seal != first->seal
                    : p->seal || n >= max_parts || bytes + p->len > b->cfg.max_bytes)
      break;
    q_pop(q);
    last->next = p;
    last = p;
    n++;
    bytes += p->len;
    n_iov += p->n_iov;
    items += p->items;
  }
  b->n_waiting -= n;
  b->waiting_bytes -= bytes;
  for (bt_part_t *p = first; p; p = p->next)
    if (!p->queued) b->waiting_unqueued -= p->len;

  int alone = n == 1 && first->alone_iov;
  if (alone) n_iov = first->n_alone_iov;
  bt_req_t *r = malloc(sizeof *r + n_iov * sizeof(struct iovec));
  int rc = UV_ENOMEM;
  const char *ce = NULL;
  if (r) {
    memset(r, 0, sizeof *r);
    r->b = b;
    r->sig = sig;
    r->parts = first;
    r->n_parts = n;
    r->items = items;
    size_t k = 0;
    if (alone) {
      memcpy(r->iov, first->alone_iov, n_iov * sizeof(struct iovec));
      k = n_iov;
      ce = first->alone_encoding;
      bytes = 0;
      for (size_t i = 0; i < k; i++) bytes += r->iov[i].iov_len;
    } else {
      for (bt_part_t *p = first; p; p = p->next) {
        memcpy(r->iov + k, p->iov, p->n_iov * sizeof(struct iovec));
        k += p->n_iov;
      }
    }
    if (!alone && b->cfg.compress && otlp_gzip_iov(r->iov, k, &r->gz, &r->gz_len) == OTLP_OK) {
      gm_force(&gm_process, r->gz_len); /* acknowledged data's copy: never refused, given back by req_free */
      r->iov[0] = (struct iovec){r->gz, r->gz_len};
      k = 1;
      ce = "gzip";
      bytes = r->gz_len;
    }
    r->bytes = bytes;
    r->start_ns = uv_hrtime();
    rc = b->send(b->send_ud, otlp_signal(sig)->path, otlp_content_type(OTLP_ENC_PROTOBUF), ce, r->iov, k, on_sent, r);
  }
  if (rc == 0) {
    b->in_flight++;
    b->last_send_ns = r->start_ns;
    return;
  }
  /* Not even queued by the pool (out of memory, the pool cancelling): as a transport failure of the request. */
  if (b->on_request) b->on_request(b->ud, sig, rc, n, items, 0, uv_hrtime(), 1);
  if (r) req_free(r);
  bt_outcome_t o = {.status = rc, .message = ""};
  finish_chain(first, &o);
}

static void flush(bt_t *b) {
  uint32_t max = b->cfg.max_in_flight ? b->cfg.max_in_flight : 1;
  while (b->n_waiting && b->in_flight < max && !b->cancelling) {
    /* Behind a young request in flight, a few parts wait for its answer and leave together; enough of them, or
     * a request that is taking long, open another connection. */
    if (b->in_flight && b->cfg.open_parts && b->n_waiting < b->cfg.open_parts && b->waiting_bytes < b->cfg.open_bytes &&
        (!b->cfg.open_after_ns || uv_hrtime() - b->last_send_ns < b->cfg.open_after_ns))
      break;
    send_one(b);
  }
}

/* Puts r's parts back at the front of their queue, to be sent again: alone (each its own seal), or in two
 * halves (two seals). */
static void resend(bt_t *b, bt_req_t *r, int halves) {
  bt_part_t *first = r->parts, *last = first;
  size_t i = 0, half = r->n_parts / 2;
  uint64_t seal = ++b->seal;
  for (bt_part_t *p = first; p; p = p->next, i++) {
    if (!halves && i > 0) seal = ++b->seal;
    else if (halves && i == half) seal = ++b->seal;
    p->seal = seal;
    b->n_waiting++;
    b->waiting_bytes += p->len;
    if (!p->queued) b->waiting_unqueued += p->len;
    last = p;
  }
  q_push_front_chain(&b->q[r->sig], first, last);
  mark_dirty(b);
}

static void on_sent(void *ud, int status, const uint8_t *body, size_t len, uint32_t retry_after) {
  bt_req_t *r = ud;
  bt_t *b = r->b;
  b->in_flight--;
  int64_t rejected = 0;
  char msg[200];
  msg[0] = 0;
  if (status >= 200 && status < 300 && len &&
      otlp_parse_partial_success(body, len, &rejected, msg, sizeof msg) != 0) {
    rejected = 0; /* an answer we cannot read says nothing was rejected (as before batching) */
    msg[0] = 0;
  }
  int several = r->n_parts > 1;
  int again = several && !b->cancelling &&
              (status == 400 || status == 413 || (status >= 200 && status < 300 && rejected > 0));
  if (b->on_request) b->on_request(b->ud, r->sig, status, r->n_parts, r->items, r->bytes, r->start_ns, !again);
  if (again) {
    resend(b, r, status == 413);
    req_free(r);
    return;
  }
  bt_part_t *parts = r->parts;
  req_free(r);
  bt_outcome_t o = {.status = status, .retry_after_s = retry_after, .rejected = several ? 0 : rejected,
                    .message = msg};
  finish_chain(parts, &o);
  if (b->n_waiting) mark_dirty(b);
}

/* ---- public ------------------------------------------------------------------------------------------- */

bt_t *bt_create(bt_group_t *g, const bt_config_t *cfg, bt_send_fn send, void *send_ud, bt_request_cb on_request,
                void *ud) {
  bt_t *b = calloc(1, sizeof *b);
  if (!b) return NULL;
  b->g = g;
  b->cfg = *cfg;
  b->send = send;
  b->send_ud = send_ud;
  b->on_request = on_request;
  b->ud = ud;
  return b;
}

void bt_set_config(bt_t *b, const bt_config_t *cfg) {
  b->cfg = *cfg;
  if (b->n_waiting) mark_dirty(b); /* a higher max_in_flight may send what waits */
}

int bt_submit(bt_t *b, bt_part_t *p) {
  if (b->cancelling) return UV_ECANCELED;
  p->seq = ++b->seq;
  p->seal = 0;
  q_push_back(&b->q[p->sig], p);
  b->n_waiting++;
  b->waiting_bytes += p->len;
  if (!p->queued) b->waiting_unqueued += p->len;
  mark_dirty(b);
  return 0;
}

void bt_cancel(bt_t *b) {
  if (b->cancelling) return;
  b->cancelling = 1;
  bt_outcome_t o = {.status = UV_ECANCELED, .message = ""};
  for (int s = 0; s < OTLP_N_SIGNALS; s++)
    for (bt_part_t *p; (p = q_pop(&b->q[s])) != NULL;) {
      b->n_waiting--;
      b->waiting_bytes -= p->len;
      if (!p->queued) b->waiting_unqueued -= p->len;
      p->done(p, &o);
    }
  b->cancelling = 0;
}

size_t bt_waiting(const bt_t *b, uint64_t *bytes) {
  if (bytes) *bytes = b->waiting_bytes;
  return b->n_waiting;
}

uint32_t bt_in_flight(const bt_t *b) { return b->in_flight; }
uint64_t bt_unqueued_bytes(const bt_t *b) { return b->waiting_unqueued; }

void bt_destroy(bt_t *b) {
  if (!b) return;
  bt_cancel(b);
  b->cancelling = 1;
  if (b->dirty) { /* unlink from the group's lists */
    bt_t **lists[2] = {&b->g->dirty, &b->g->flushing};
    for (int i = 0; i < 2; i++)
      for (bt_t **pp = lists[i]; *pp; pp = &(*pp)->dirty_next)
        if (*pp == b) {
          *pp = b->dirty_next;
          break;
        }
  }
  free(b);
}
