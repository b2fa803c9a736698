/* The kernel's clock sync state as the rig wants it, for one process (LD_PRELOAD).
 *
 * libfaketime moves a process's wall clock but not what adjtimex(2) says about it; this
 * stands in for that answer, as libfaketime stands in for the time. A read (modes == 0) is
 * passed to the real adjtimex, then the status is set from the file named by
 * SENSEGATE_CLOCKSTATE_FILE: "sync MAXERROR_US" (synchronised) or "unsync" (STA_UNSYNC, the
 * kernel's 16 s maximum error, TIME_ERROR). No file, or anything else in it: the real answer.
 * A call that would change the clock is passed through untouched (and refused by the kernel
 * without CAP_SYS_TIME). Built by hil/faults.py (ClockJump.build); never
 * installed on a gateway.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/timex.h>

int adjtimex(struct timex *tx)
{
    static int (*real)(struct timex *);
    if (!real)
        real = (int (*)(struct timex *))dlsym(RTLD_NEXT, "adjtimex");
    int modes = tx->modes;
    int rc = real(tx);
    const char *path = getenv("SENSEGATE_CLOCKSTATE_FILE");
    if (rc < 0 || modes != 0 || !path)
        return rc;
    FILE *f = fopen(path, "r");
    if (!f)
        return rc;
    char word[16] = "";
    long maxerror = 0;
    int n = fscanf(f, "%15s %ld", word, &maxerror);
    fclose(f);
    if (n >= 1 && strcmp(word, "unsync") == 0) {
        tx->status |= STA_UNSYNC;
        tx->maxerror = 16000000;
        return TIME_ERROR;
    }
    if (n == 2 && strcmp(word, "sync") == 0) {
        tx->status &= ~STA_UNSYNC;
        tx->maxerror = maxerror;
        return TIME_OK;
    }
    return rc;
}
