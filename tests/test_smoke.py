def test_enrol_and_read(client, shop):
    response = client.put("/api/v1/customers/c1", json={"email": "a@example.com"}, headers=shop)
    assert response.status_code == 201, response.json
    assert client.get("/api/v1/customers/c1", headers=shop).json["stats"]["clicks"] == 0
