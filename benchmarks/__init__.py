"""Speed and accuracy measurements (`make bench`), never part of `make test`; tests reuse a few of their functions."""
