/*
 * A tiny unit-test harness: TEST(name) { ... CHECK(cond); CHECK_EQ_INT(a, b); CHECK_EQ_STR(a, b); }
 * and a main via TEST_MAIN() that runs every registered test (or those named on the command line) and prints
 * "N passed, N failed". Exit status is non-zero when any check failed, in a test, in setup or in teardown,
 * or when a name on the command line matches no test. Each test binary is one ctest entry.
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
    if (test__n_entries < 256) test__entries[test__n_entries] = (struct test_entry){#name, test_##name}; \
    test__n_entries++; /* past 256: main fails rather than dropping tests */        \
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

/* 1 when name is one of the command-line arguments argv[1..argc-1]. */
static inline int test__named(int argc, char **argv, const char *name) {
  for (int i = 1; i < argc; i++)
    if (strcmp(argv[i], name) == 0) return 1;
  return 0;
}

/* 1 when a registered test has this name. */
static inline int test__exists(const char *name) {
  for (int i = 0; i < test__n_entries && i < 256; i++)
    if (strcmp(test__entries[i].name, name) == 0) return 1;
  return 0;
}

/* setup() runs before the first test, teardown() after the last. Checks failing in setup count as a failed
 * test named "setup" and then no test runs, nor teardown (it may rely on what setup did not finish); checks
 * failing in teardown count as a failed test named "teardown". Names on the command line run only those
 * tests, and a name that matches no test is a failure (a typo must not pass as "0 failed"), as is a binary
 * with no test at all or more tests than test__entries holds. */
#define TEST_MAIN_WITH(setup, teardown)                                             \
  struct test_entry test__entries[256];                                             \
  int test__n_entries;                                                              \
  int test__failed_checks;                                                          \
  int main(int argc, char **argv) {                                                 \
    int passed = 0, failed = 0;                                                     \
    const int test__cap = (int)(sizeof test__entries / sizeof test__entries[0]);    \
    if (test__n_entries == 0 || test__n_entries > test__cap) {                      \
      printf("FAIL registration: %d tests, room for 1..%d\n", test__n_entries, test__cap); \
      return 1;                                                                     \
    }                                                                               \
    for (int i = 1; i < argc; i++)                                                  \
      if (!test__exists(argv[i])) { failed++; printf("FAIL %s: no such test\n", argv[i]); } \
    if (failed) {                                                                   \
      printf("%d passed, %d failed\n", passed, failed);                             \
      return 1;                                                                     \
    }                                                                               \
    setup();                                                                        \
    if (test__failed_checks) {                                                      \
      printf("FAIL setup (%d tests not run)\n0 passed, 1 failed\n", test__n_entries); \
      return 1;                                                                     \
    }                                                                               \
    for (int i = 0; i < test__n_entries; i++) {                                     \
      if (argc > 1 && !test__named(argc, argv, test__entries[i].name)) continue;    \
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
