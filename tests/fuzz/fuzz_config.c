/*
 * libFuzzer driver for config/: the YAML loader and the scalar parsers must never crash, leak, or produce an
 * error that is not one line starting with the file name.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char err[512];
  cfg_t c;
  int rc = cfg_load_string(&c, (const char *)data, size, "fuzz.yaml", err, sizeof err);
  if (rc != 0 && (strncmp(err, "fuzz.yaml:", 10) != 0 || strchr(err, '\n') != NULL)) abort();
  if (rc == 0 && (!c.server.listen || !c.telemetry.listen || !c.backends.health_check.path)) abort();

  /* The same bytes as one C string through the parsers the CLI uses. */
  char *s = malloc(size + 1);
  if (s) {
    memcpy(s, data, size);
    s[size] = '\0';
    uint64_t v;
    char *host = NULL;
    uint16_t port;
    (void)cfg_parse_duration_ms(s, &v);
    (void)cfg_parse_size(s, &v);
    if (cfg_parse_hostport(s, &host, &port) == 0 && (!host || !*host)) abort();
    free(host);
    if (cfg_add_backends_from_list(&c, s, err, sizeof err) != 0 && strchr(err, '\n') != NULL) abort();
    free(s);
  }
  cfg_dispose(&c);
  return 0;
}
