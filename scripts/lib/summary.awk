#!/usr/bin/awk -f
# The closing `N passed, M failed` line of scripts/test, from the log of
# `cargo test` and scripts/js-test. Each test binary cargo starts
# ("Running ... (target/.../deps/NAME)" or "Doc-tests NAME") must print its
# own `test result:` line; one that ended without it (a crash, an abort, a
# signal) is named by its path and counted as one failed test.

function close_binary() {
    if (binary != "" && !reported) {
        crashed++
        print "scripts/test: no result from " binary " (it crashed)"
    }
    binary = ""
}

/^ +Running .*\(.*\)$/ {
    close_binary()
    # The binary's path, in the line's last parentheses.
    binary = $0
    sub(/^.*\(/, "", binary)
    sub(/\)$/, "", binary)
    reported = 0
}
/^ +Doc-tests / {
    close_binary()
    binary = "doc-tests " $2
    reported = 0
}
/^test result:/ { passed += $4; failed += $6; reported = 1 }
/^js: [0-9]+ passed, [0-9]+ failed/ { passed += $2; failed += $4 }
END {
    close_binary()
    printf "%d passed, %d failed\n", passed, failed + crashed
}
