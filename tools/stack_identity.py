#!/usr/bin/env python3
"""Keystone registrations of the Cinder stack, in one openstacksdk process.

``tools/cinder-stack`` runs ``stack_identity.py register`` once Keystone is
bootstrapped (an ``openstack`` call costs seconds of start-up; this does every
registration in one): the ``service`` project, the ``cinder`` service user with
the ``admin`` and ``service`` roles on it (what keystonemiddleware's
``service_token_roles_required`` checks), the ``block-storage`` and
``volumev3`` services and their public and internal endpoints, as devstack
does. ``tests/e2e/stack.py`` uses ``ensure_user`` for its other projects' users.

Every step finds before it creates: running it again changes nothing.
Credentials come from the environment that ``tools/cinder-stack env`` prints.
"""

import argparse
import os
import sys

import openstack

DOMAIN = "default"
SERVICES = (("cinder", "block-storage"), ("cinderv3", "volumev3"))
INTERFACES = ("public", "internal")


def connect_admin(env=os.environ):
    """An openstacksdk connection as the stack's admin (openrc variables)."""
    return openstack.connect(
        auth_url=env["OS_AUTH_URL"], username=env["OS_USERNAME"],
        password=env["OS_PASSWORD"], project_name=env["OS_PROJECT_NAME"],
        user_domain_name=env["OS_USER_DOMAIN_NAME"],
        project_domain_name=env["OS_PROJECT_DOMAIN_NAME"],
        region_name=env.get("OS_REGION_NAME", "RegionOne"), load_yaml_config=False,
        load_envvars=False)


def ensure_role(conn, name):
    return conn.identity.find_role(name) or conn.identity.create_role(name=name)


def ensure_project(conn, name):
    return (conn.identity.find_project(name, domain_id=DOMAIN)
            or conn.identity.create_project(name=name, domain_id=DOMAIN,
                                            description="tools/cinder-stack"))


def ensure_user(conn, project_name, user_name, password, roles=("member",)):
    """The user (password set to ``password``) with ``roles`` on the project
    (created if missing); return ``(project, user)``."""
    project = ensure_project(conn, project_name)
    user = conn.identity.find_user(user_name, domain_id=DOMAIN)
    if user is None:
        user = conn.identity.create_user(name=user_name, password=password,
                                         domain_id=DOMAIN, default_project_id=project.id)
    else:  # a fresh password each time would log out every client: set the one asked
        user = conn.identity.update_user(user, password=password)
    for role_name in roles:
        role = ensure_role(conn, role_name)
        conn.identity.assign_project_role_to_user(project, user, role)
    return project, user


def ensure_service_endpoints(conn, name, service_type, url, region):
    services = [s for s in conn.identity.services() if s.type == service_type]
    service = services[0] if services else conn.identity.create_service(
        name=name, type=service_type, description="Cinder Volume Service (cinder-stack)")
    existing = {(e.interface, e.url) for e in conn.identity.endpoints(service_id=service.id)}
    for interface in INTERFACES:
        if (interface, url) not in existing:
            conn.identity.create_endpoint(service_id=service.id, interface=interface,
                                          url=url, region_id=region)


def register(conn, cinder_url, cinder_password, region):
    ensure_user(conn, "service", "cinder", cinder_password, roles=("admin", "service"))
    for name, service_type in SERVICES:
        ensure_service_endpoints(conn, name, service_type, cinder_url, region)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    reg = sub.add_parser("register", help="the cinder user, services and endpoints")
    reg.add_argument("--cinder-url", required=True)
    reg.add_argument("--region", default="RegionOne")
    args = parser.parse_args()
    password = os.environ.get("CINDER_SERVICE_PASSWORD")
    if not password:
        sys.exit("stack_identity: CINDER_SERVICE_PASSWORD is not set")
    register(connect_admin(), args.cinder_url, password, args.region)
    return 0


if __name__ == "__main__":
    sys.exit(main())
