/*
 * A tiny unit-test harness: TEST(name) { ... CHECK(cond); CHECK_EQ_INT(a, b); CHECK_EQ_STR(a, b); }
 * and a main via TEST_MAIN() that runs every registered test and prints "N passed, N failed".
 * Exit status is non-zero when any check failed. Each test binary is one ctest entry.
 */
#ifndef OTLPGW_TEST_H
#define OTLPGW_TEST_H

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void (*test_fn)(void);
struct test_entry { const char *name; test_fn fn; };

extern struct test_entry test__entries[256];
extern int test__n_entries;
extern int test__failed_checks;

#define TEST(name)                                                                  \
  static void test_##name(void);                                                    \
  __attribute__((constructor)) static void test__reg_##name(void) {                 \
    if (test__n_entries < 256) test__entries[test__n_entries++] = (struct test_entry){#name, test_##name}; \
  }                                                                                 \
  static void test_##name(void)

#define CHECK(cond)                                                                 \
  do {                                                                              \
    if (!(cond)) {                                                                  \
      fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond);      \
      test__failed_checks++;                                                        \
    }                                                                               \
  } while (0)

#define CHECK_EQ_INT(a, b)                                                          \
  do {                                                                              \
    long long test__a = (long long)(a), test__b = (long long)(b);                   \
    if (test__a != test__b) {                                                       \
      fprintf(stderr, "%s:%d: %s == %s failed: %lld != %lld\n", __FILE__, __LINE__, #a, #b, test__a, test__b); \
      test__failed_checks++;                                                        \
    }                                                                               \
  } while (0)

#define CHECK_EQ_STR(a, b)                                                          \
  do {                                                                              \
    const char *test__a = (a), *test__b = (b);                                      \
    if (!test__a || !test__b || strcmp(test__a, test__b) != 0) {                    \
      fprintf(stderr, "%s:%d: %s == %s failed: \"%s\" != \"%s\"\n", __FILE__, __LINE__, #a, #b, \
              test__a ? test__a : "(null)", test__b ? test__b : "(null)");          \
      test__failed_checks++;                                                        \
    }                                                                               \
  } while (0)

#define CHECK_CONTAINS(hay, needle)                                                 \
  do {                                                                              \
    const char *test__h = (hay), *test__n = (needle);                               \
    if (!test__h || !strstr(test__h, test__n)) {                                    \
      fprintf(stderr, "%s:%d: \"%s\" does not contain \"%s\"\n", __FILE__, __LINE__, \
              test__h ? test__h : "(null)", test__n);                               \
      test__failed_checks++;                                                        \
    }                                                                               \
  } while (0)

#define TEST_MAIN() TEST_MAIN_WITH(test__noop, test__noop)
static inline void test__noop(void) {}

/* setup() runs before the first test, teardown() after the last; checks failing in teardown count as a
 * failed test named "teardown". */
#define TEST_MAIN_WITH(setup, teardown)                                             \
  struct test_entry test__entries[256];                                             \
  int test__n_entries;                                                              \
  int test__failed_checks;                                                          \
  int main(int argc, char **argv) {                                                 \
    int passed = 0, failed = 0;                                                     \
    setup();                                                                        \
    for (int i = 0; i < test__n_entries; i++) {                                     \
      if (argc > 1 && strcmp(argv[1], test__entries[i].name) != 0) continue;        \
      int before = test__failed_checks;                                             \
      test__entries[i].fn();                                                        \
      if (test__failed_checks == before) { passed++; printf("ok   %s\n", test__entries[i].name); } \
      else { failed++; printf("FAIL %s\n", test__entries[i].name); }                \
    }                                                                               \
    int before_teardown = test__failed_checks;                                      \
    teardown();                                                                     \
    if (test__failed_checks != before_teardown) { failed++; printf("FAIL teardown\n"); } \
    printf("%d passed, %d failed\n", passed, failed);                               \
    return failed ? 1 : 0;                                                          \
  }

#endif
