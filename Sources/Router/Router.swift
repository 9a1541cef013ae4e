// The Router layer: see README.md "Code layout".
