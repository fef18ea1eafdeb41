/*
 * A blocking HTTP/1.1 test client for unit tests that run a server on a loop thread of their own
 * (test_http_server, test_memory): connect to 127.0.0.1, send bytes, read one response at a time.
 * Every call is bounded by the socket timeouts set at connect.
 */
#ifndef OTLPGW_TEST_HTTP_CLIENT_H
#define OTLPGW_TEST_HTTP_CLIENT_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "test.h"

typedef struct client {
  int fd;
  char buf[65536];
  size_t len;
} client_t;

typedef struct response {
  int status;
  int close;             /* Connection: close */
  char retry_after[16];  /* the Retry-After header's digits, "" when absent */
  char ctype[32];        /* Content-Type */
  char body[4096];       /* the first sizeof body - 1 bytes, NUL-terminated */
  size_t body_len;
} response_t;

static inline client_t *client_connect(uint16_t port, int timeout_s) {
  client_t *c = calloc(1, sizeof *c);
  c->fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  struct timeval tv = {.tv_sec = timeout_s};
  setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  CHECK_EQ_INT(connect(c->fd, (struct sockaddr *)&a, sizeof a), 0);
  return c;
}

static inline void client_close(client_t *c) {
  close(c->fd);
  free(c);
}

static inline void send_all(client_t *c, const void *p, size_t n) {
  const char *s = p;
  while (n) {
    ssize_t k = send(c->fd, s, n, MSG_NOSIGNAL);
    if (k <= 0) {
      CHECK(k > 0);
      return;
    }
    s += k;
    n -= (size_t)k;
  }
}

static inline void sendstr(client_t *c, const char *s) { send_all(c, s, strlen(s)); }

/* Reads one response (Content-Length framed, or none). Returns 0, or -1 on EOF/timeout before it is whole. */
static inline int read_response(client_t *c, response_t *r) {
  memset(r, 0, sizeof *r);
  for (;;) {
    c->buf[c->len] = 0;
    char *end = strstr(c->buf, "\r\n\r\n");
    if (end) {
      size_t head = (size_t)(end + 4 - c->buf);
      const char *cl = strcasestr(c->buf, "Content-Length:");
      size_t blen = cl && cl < end ? strtoul(cl + 15, NULL, 10) : 0;
      if (c->len >= head + blen) {
        r->status = atoi(c->buf + 9);
        const char *conn = strcasestr(c->buf, "Connection: close");
        r->close = conn && conn < end;
        const char *ra = strcasestr(c->buf, "Retry-After: ");
        if (ra && ra < end) sscanf(ra + 13, "%15[0-9]", r->retry_after);
        const char *ct = strcasestr(c->buf, "Content-Type: ");
        if (ct && ct < end) sscanf(ct + 14, "%31[^\r]", r->ctype);
        r->body_len = blen < sizeof r->body ? blen : sizeof r->body - 1;
        memcpy(r->body, c->buf + head, r->body_len);
        memmove(c->buf, c->buf + head + blen, c->len - head - blen);
        c->len -= head + blen;
        return 0;
      }
    }
    ssize_t n = recv(c->fd, c->buf + c->len, sizeof c->buf - 1 - c->len, 0);
    if (n <= 0) return -1;
    c->len += (size_t)n;
  }
}

#endif
