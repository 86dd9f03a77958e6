"""lowbit's backends, installed as `lowbit.backends.<name>`: one subpackage per backend, one file
per op family, each kernel next to its capability record."""
