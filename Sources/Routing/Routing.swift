// The Routing layer: see README.md "Code layout".
