// The Mesh layer: see README.md "Code layout".
