/*
 * fuzz_main: the main() of a fuzz target outside libFuzzer (the ordinary
 * builds, and so make check): LLVMFuzzerTestOneInput() over every file
 * given, or in a directory given, as arguments; without arguments over
 * its seed corpus, $BNSTAT_FUZZ_CORPUS/<target> (the program's name
 * without "fuzz_"). An input that breaks an invariant aborts the program,
 * which fails the test. With libFuzzer (make fuzz) this file is not
 * linked: libFuzzer has its own main().
 */
#include "fuzz_common.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static size_t ran;

static void run_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	uint8_t *data = NULL;
	size_t len = 0, cap = 0, n;

	FUZZ_ASSERT(f != NULL, "%s: %s", path, strerror(errno));
	do {
		if (len == cap) {
			cap = cap ? cap * 2 : 4096;
			data = realloc(data, cap);
			FUZZ_ASSERT(data != NULL, "out of memory");
		}
		n = fread(data + len, 1, cap - len, f);
		len += n;
	} while (n > 0);
	fclose(f);
	/* exactly len bytes, so that a read past the input is caught */
	data = realloc(data, len ? len : 1);
	FUZZ_ASSERT(data != NULL, "out of memory");
	LLVMFuzzerTestOneInput(data, len);
	free(data);
	ran++;
}

static void run_path(const char *path)
{
	struct stat st;
	struct dirent **names;
	int n;

	FUZZ_ASSERT(stat(path, &st) == 0, "%s: %s", path, strerror(errno));
	if (!S_ISDIR(st.st_mode)) {
		run_file(path);
		return;
	}
	n = scandir(path, &names, NULL, alphasort);
	FUZZ_ASSERT(n >= 0, "%s: %s", path, strerror(errno));
	for (int i = 0; i < n; i++) {
		char sub[4096];

		if (names[i]->d_name[0] != '.') {
			snprintf(sub, sizeof(sub), "%s/%s", path, names[i]->d_name);
			run_path(sub);
		}
		free(names[i]);
	}
	free(names);
}

int main(int argc, char **argv)
{
	if (argc > 1) {
		for (int i = 1; i < argc; i++)
			run_path(argv[i]);
	} else {
		const char *dir = getenv("BNSTAT_FUZZ_CORPUS");
		const char *name = strrchr(argv[0], '/');
		char path[4096];

		FUZZ_ASSERT(dir != NULL, "no input given and BNSTAT_FUZZ_CORPUS unset");
		name = name ? name + 1 : argv[0];
		if (strncmp(name, "fuzz_", 5) == 0)
			name += 5;
		snprintf(path, sizeof(path), "%s/%s", dir, name);
		run_path(path);
		/* an empty corpus would test nothing */
		FUZZ_ASSERT(ran > 0, "no input in %s", path);
	}
	printf("%s: %zu inputs, every invariant held\n", argv[0], ran);
	return 0;
}
