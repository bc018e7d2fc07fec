//! The real `mana-sync` binary, started on a free port for black-box tests.
