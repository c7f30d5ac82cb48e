"""Pipeline stages placed on Ray: each composes the plain libraries in zoo/ and interpreter/ and adds only placement."""
