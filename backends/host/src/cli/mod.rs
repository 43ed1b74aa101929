//! The `introvisor` command-line tool.
