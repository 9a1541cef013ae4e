// The Store layer: see README.md "Code layout".
