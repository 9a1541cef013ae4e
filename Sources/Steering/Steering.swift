// The Steering layer: see README.md "Code layout".
