"""The web dashboard: read-only pages over the same in-memory view the gRPC API answers from.

`pages` turns records into the JSON each page draws (pure: no I/O, `now` passed in);
`curves` keeps the points of each job's loss and accuracy as its status moves; `http` is
a small HTTP/1.1 server on asyncio streams (JSON, server-sent events, the static files of
`web/`); `server` wires them to the view, the store (jobs, events) and the tokens.

It must not write anything, speak gRPC, or fetch anything from outside the package at run
time: the pages and the pinned libraries they use (`web/vendor.js`, built by `make ui`)
ship in the Python package.
"""
