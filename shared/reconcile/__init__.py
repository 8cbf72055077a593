"""The whole app's loop: finish whatever events started or missed (:mod:`.run`, a timer and on
demand), the stuck-state sweep it runs (:mod:`.sweep`), and settling one endpoint record
(:mod:`.settle`), which reconcile does for every endpoint in flight and a follow-up message does
for one, within seconds."""
