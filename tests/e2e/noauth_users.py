"""Cinder's noauth with ordinary users: the end-to-end tests' second project.

Cinder 29's ``noauth`` makes every caller an admin, whatever user and project
ids it sends (``cinder/api/middleware/auth.py``), so tenant isolation could
not be tested. This filter, which ``tools/cinder-stack`` puts in place of
``noauth`` in its own api-paste.ini, keeps that for the user ``admin`` and
makes any other user a member of the project it names (roles ``member`` and
``reader``, not an admin): the API's project scoping and policies then apply
as for a Keystone user. With Keystone in front, the tests' ``client_for``
helper is pointed at real users instead and this module is not used.
"""

import webob.dec
from cinder.api.middleware import auth
from cinder.api.openstack import wsgi

ADMIN_USER = "admin"
MEMBER_ROLES = ["member", "reader"]


class NoAuthUsers(auth.NoAuthMiddleware):

    @webob.dec.wsgify(RequestClass=wsgi.Request)
    def __call__(self, req):
        token = req.headers.get("X-Auth-Token")
        user_id, _sep, project_id = (token or "").partition(":")
        if token is None or user_id == ADMIN_USER:
            return self.base_call(req)
        auth._set_request_context(req, user_id=user_id, project_id=project_id or user_id,
                                  is_admin=False, roles=list(MEMBER_ROLES))
        return self.application
