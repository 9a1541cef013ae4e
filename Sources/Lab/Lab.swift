// The Lab layer: see README.md "Code layout".
