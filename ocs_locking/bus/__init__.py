"""The bus component: a crossbar router component that authorizes the ocs
agents' role dynamically (:mod:`.rules`, pure; :mod:`.authorizer`, its
Twisted shell) and the crossbar config rewriting behind
``ocs-locks crossbar-config`` (:mod:`.config`, pure).

Everything here imports only the standard library, autobahn, twisted and
txaio: it runs inside crossbar's own environment."""
