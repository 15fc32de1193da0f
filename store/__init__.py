"""Durable state: the Store protocol and its backends.

`store.base` is the contract every backend passes (one conformance suite); `store.sqlite`
is the embedded default, `store.dynamodb` the cluster store. `store.url.open_store` picks
one from a URL. Third-party errors never leave this package: backends translate them into
`store.errors`. Nothing here decides anything; it only keeps records and their versions,
except `store.retry`, the one policy for retrying a read-modify-write on Conflict.
"""
