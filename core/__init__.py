"""Foundation every stage may import: the bad-input error, atomic writes, stable seeding, keyids, hashing,
devices, the mp4 reader/writer and the restricted unpickler. Imports nothing from the other packages."""
