/*
 * faultvfs: a SQLite VFS for tests that wraps the default one and makes
 * writes fail at a chosen moment (docs/TESTING.md, "Disk faults").
 *
 * Installed as the default VFS it changes nothing until it is armed: then
 * the first `after` writes (xWrite) to a database file or its write-ahead
 * log go through, and every one after them fails with the mode's code
 * until it is disarmed or armed again:
 *
 *   FAULT_FULL     SQLITE_FULL        (what the unix VFS returns for ENOSPC)
 *   FAULT_IOERR    SQLITE_IOERR_WRITE (a write the disk refused)
 *   FAULT_CORRUPT  SQLITE_CORRUPT     (on writes and on page reads: the file is damaged)
 *
 * Check programs call faultvfs_install() and faultvfs_arm(). The test
 * daemon (tests/bnstatd_fault: src/main.c linked with this file) installs
 * it before main() when $BNSTAT_FAULT_VFS names a control file, and reads
 * that file again whenever it changes (a new inode, size or mtime): one
 * line `off`, or `full|ioerr|corrupt [after=N] [file=db|wal|any]`.
 */
#ifndef BNSTAT_FAULTVFS_H
#define BNSTAT_FAULTVFS_H

enum fault_mode { FAULT_OFF, FAULT_FULL, FAULT_IOERR, FAULT_CORRUPT };

/* Which files an armed fault hits. */
enum fault_files { FAULT_FILES_ANY, FAULT_FILES_DB, FAULT_FILES_WAL };

/* Register the shim as the default VFS (once; later calls do nothing): 0 or -1. */
int faultvfs_install(void);

/* Let `after` more writes through, then fail every write with mode's code. */
void faultvfs_arm(enum fault_mode mode, long after, enum fault_files files);

/* Stop failing. */
void faultvfs_disarm(void);

/* Writes (to the files the fault hits) that failed since the last arm. */
long faultvfs_failed(void);

#endif
