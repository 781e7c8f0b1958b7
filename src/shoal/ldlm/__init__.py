"""The distributed lock manager (Lustre's ldlm): the server side that grants and calls back
(server.py), the client side that caches under the locks it holds (client.py). The rules
themselves are sans I/O, in protocol/ldlm.py."""
