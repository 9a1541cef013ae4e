// The Probing layer: see README.md "Code layout".
