// The Model layer: see README.md "Code layout".
