"""The `whitebox` command and the embedded Redis of the all-in-one set-up; it may import both sides."""
