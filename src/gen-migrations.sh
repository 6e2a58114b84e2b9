#!/bin/sh
# Turn sql/NNNN_*.sql into a C table of (version, name, text) so that the
# daemon carries its schema with it. Version = the file's leading number.
# Usage: gen-migrations.sh SRCDIR sql/0001_init.sql ...
set -e
srcdir=$1
shift
echo '/* Generated from the files in sql/ by src/gen-migrations.sh: do not edit. */'
echo '#include "store.h"'
echo 'const struct store_migration store_migrations[] = {'
for rel in "$@"; do
	f="$srcdir/$rel"
	base=$(basename "$f" .sql)
	ver=$(echo "$base" | sed 's/^0*\([0-9][0-9]*\)_.*/\1/')
	printf '\t{ %s, "%s",\n' "$ver" "$base"
	sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/^/\t  "/' -e 's/$/\\n"/' "$f"
	printf '\t},\n'
done
echo '};'
echo 'const size_t store_migrations_count = sizeof(store_migrations) / sizeof(store_migrations[0]);'
