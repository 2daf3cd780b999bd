/* test_c2s_fit.c - Compare2Score's maximum-likelihood fit (compare_fit in qalign.c) alone,
 * for tests/test_family.py, which compares it with the original code's fit in PyTorch.
 *
 *   build/test_c2s_fit < PREFS      one line of 5 preferences per image -> its 0..100 score
 *
 * Prints one score per line (%.9g), "nan" when the fit has no scale. */
#ifndef TESTING
#define TESTING
#endif
#include "../qalign.c"
#include "../kernels.c"

int main(void) {
    float p[C2S_ANCHORS];
    for (;;) {
        for (int k = 0; k < C2S_ANCHORS; k++)
            if (scanf("%f", &p[k]) != 1) return 0;
        printf("%.9g\n", compare_fit(p));
    }
}
